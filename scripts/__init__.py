"""Dev-side helpers for ``make run``, the tests and the benchmarks; never shipped (not in wheels).

A regular package, not a namespace one, so that a ``scripts`` package some dependency installs
in site-packages cannot shadow this folder: the checkout comes first on ``sys.path``.
"""
