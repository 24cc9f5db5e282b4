"""``python -m anomalib_simplenet.benchmark``."""

from .run import main

raise SystemExit(main())
