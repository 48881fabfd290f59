"""The command line (cli), the demo, and the progress bar over a run."""
