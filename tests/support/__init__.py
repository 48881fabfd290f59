"""Helpers shared by the tests and the benchmarks: the tiny model, fake components, the
tiny setups of the graph tests, the browser."""
