"""``python -m edgeseg.cli``."""

import sys

from edgeseg.cli import main

sys.exit(main())
