"""``python -m llasm ...``: the same as the ``llasm`` command."""

import sys

from llasm.cli import main

sys.exit(main())
