"""Config sweeps (``python -m anomalib_simplenet.experiments.sweep``) and the notebooks' helpers (``notebook``)."""
