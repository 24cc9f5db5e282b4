"""Reliability guards of the plugin's models: finite losses, matching checkpoints, exact resume, input sizes.

Each model calls them from its Lightning hooks (see :mod:`anomalib_simplenet.models.plugin_module`); bad input
or a broken run stops with an error that names what to change, never with a silently wrong model.
"""
