"""Jittable T×T solvers shared by the methods (fixed iteration budgets, on device)."""

from mtljax.solvers._simplex import min_norm_simplex, normalize_gram, project_simplex

__all__ = ["min_norm_simplex", "normalize_gram", "project_simplex"]
