"""Feedback service benchmark: `python -m bench.feedback [--quick]` (see __main__.py)."""
