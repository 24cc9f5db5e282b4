"""``python -m anomalib_simplenet.study``."""

import sys

from .cli import main

sys.exit(main())
