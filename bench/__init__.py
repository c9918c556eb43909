"""Benchmark of spoolkit against the raw uWSGI spooler and the peers (see README.md)."""
