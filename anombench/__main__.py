"""``python -m anombench`` is the ``anombench`` command (for environments whose scripts folder is not on PATH)."""

import sys

from anombench.cli import main

sys.exit(main())
