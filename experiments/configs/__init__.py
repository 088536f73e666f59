"""Experiment configs: modules with get_config(arg=None) -> RunConfig (see mtljax.cli)."""
