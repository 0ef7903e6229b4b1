"""Test oracles: references that share no code with the engines they check.

* :mod:`oracles.mp_reference`: the 50-digit mpmath NNGP/NTK recursion and closed-form duals,
  and the loader of the stored references ``tests/data/reference_kernels.npz``.
* :mod:`oracles.mp_quadrature`: 2-D Gauss-Legendre quadrature of Gaussian expectations.

Test modules import these as ``from oracles.<module> import ...``; ``tests/conftest.py`` puts
``tests/`` on ``sys.path`` so that this works under any pytest import mode, and
``scripts/make_references.py`` does the same.
"""
