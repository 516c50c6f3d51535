"""Allow `python -m gotr1`."""

import sys

from gotr1.cli import main

sys.exit(main())
