"""The measuring layer under the benchmarks, the study, the sweeps and the notebooks' helpers (``docs/measuring.md``).
Imported on demand: ``import anomalib_simplenet`` does not load it."""
