"""Traces people read: a thread read back from its checkpoints (``read_thread``, as a
table or JSON), a thread's HTML page with the graph drawn and its path highlighted, and a
run's HTML report with its figures, timings, clusters, searches and adapters.

thread (read a thread), run (read a run), graph_svg (the graph as SVG), plots
(matplotlib pictures), pages (the Jinja2 pages).
"""

from sage_agent.report.pages import render_thread, thread_file, write_run_report
from sage_agent.report.run import RunReport, latest_run, read_run
from sage_agent.report.thread import ThreadTrace, latest_thread, read_thread, render_table

__all__ = [
    "RunReport",
    "ThreadTrace",
    "latest_run",
    "latest_thread",
    "read_run",
    "read_thread",
    "render_table",
    "render_thread",
    "thread_file",
    "write_run_report",
]
