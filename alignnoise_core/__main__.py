"""``python -m alignnoise_core``: the standalone command line (see :mod:`alignnoise_core.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
