"""``python -m infntk`` and the ``infntk`` console script: see :mod:`infntk.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
