"""`python -m node`: the `govnode` command, for a machine where the venv's scripts are not on PATH."""

import sys

from node.cli import main

sys.exit(main())
