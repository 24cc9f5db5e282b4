"""``python -m anomalib_simplenet.benchmark``."""

import sys

from .cli import main

sys.exit(main())
