"""``python -m llasm ...``: the same as the ``llasm`` command."""

import sys

from llasm.cli import main

if __name__ == "__main__":
    sys.exit(main())
