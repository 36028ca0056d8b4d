"""Benchmarks of zapi-channel against Rasa's own channels and against the machine's limit.

``python -m bench.run`` (``make bench``) runs them all and writes ``docs/benchmarks.md``; see
``bench/README.md``. Nothing here is a test: numbers are reported, never asserted.
"""
