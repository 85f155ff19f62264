"""The sections of ``benchmarks/perf.py``, one module each, and what they share (``common``)."""
