"""`python -m zonegate`: the same as the `zonegate` command."""

import sys

from zonegate.cli import main

sys.exit(main())
