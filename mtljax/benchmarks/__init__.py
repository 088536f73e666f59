"""Built-in offline benchmarks that reproduce published multi-task claims.

Each module defines a frozen settings dataclass with ``run(workdir) -> summary`` and
``table(summary) -> str``, and ``mtljax/configs/<name>.py`` returns one, so that
``mtljax run <name> --workdir DIR`` runs it (``--set field=value`` overrides a setting):

* :mod:`~mtljax.benchmarks.toy2d` — the CAGrad / Nash-MTL / FAMO two-objective toy: which
  methods reach the Pareto set from which starts.
* :mod:`~mtljax.benchmarks.gradnorm_synthetic` — GradNorm's regression tasks of very different
  scales: normalised loss ``Σ_i L_i(t) / L_i(0)``.
* :mod:`~mtljax.benchmarks.mmoe_synthetic` — the MMoE paper's regression tasks of controlled
  correlation: MMoE versus hard sharing as the correlation drops.
* :mod:`~mtljax.benchmarks.linear` — two linear tasks: joint and alternating training recover
  the true weights.
* :mod:`~mtljax.benchmarks.text` — token sequences with targets defined by different features.

What each measured against its paper's claim is in ``docs/reproductions.md``.
"""
