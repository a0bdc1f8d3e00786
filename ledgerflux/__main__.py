"""``python -m ledgerflux``: the same as the ``ledgerflux`` command."""

import sys

from ledgerflux.cli import main

if __name__ == "__main__":
    sys.exit(main())
