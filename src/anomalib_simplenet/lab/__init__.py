"""The measuring layer every benchmark, the study, the sweeps and the notebooks' helpers stand on.

Modules (each concern once): ``data`` (subset rule, datamodule with validation from the test folder, raw test
images), ``fit`` (one fit, its result type, loss history and epoch timer), ``scores`` (raw and normalised scores,
AUROC/AUPRO/F1 from anomalib's metric classes, thresholds), ``latency`` (timing, memory, runners), ``export``
(deployment variants measured side by side), ``peers`` (anomalib's models on our backbone weights), ``compare``
(one model of a comparison, fitted and scored), ``isolated`` (a measurement in its own process), ``report``
(tables and table files), ``figures``, ``weights`` (the ``--weights`` option). Imported on demand:
``import anomalib_simplenet`` does not load it.
"""
