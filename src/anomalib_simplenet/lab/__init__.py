"""The measuring layer every benchmark, the study, the sweeps and the notebooks' helpers stand on, each concern
once: ``data``, ``fit``, ``scores``, ``latency``, ``export`` (deployment variants), ``peers`` (anomalib's models on
our weights), ``compare``, ``isolated`` (a measurement in its own process), ``report``, ``figures``, ``settings``,
``weights`` (the ``--weights`` option). Imported on demand: ``import anomalib_simplenet`` does not load it.
"""
