"""``python -m jaxar``: the same as the ``jaxar`` command."""

import sys

from jaxar.cli import main

if __name__ == "__main__":
    sys.exit(main())
