"""The method registry: every multi-task method by name.

The built-in methods are listed explicitly in :data:`BUILTINS` (no import-time registration).
Each entry names the module and factory that build it, preset keyword arguments (aliases such
as ``mean`` and ``mgda_ub`` are presets of another factory), a one-line summary and the paper.
Modules are imported on first use, so listing the registry stays cheap.

:data:`REGISTRY` holds the built-ins and the methods a user adds with :func:`register_method`
(a factory ``(num_tasks, **hparams) -> Method``); every name in it works in
:func:`get_method`, :func:`mtljax.aggregate`, the runner and ``mtljax methods``. Use
:func:`get_method` to build a method by name, :func:`method_names` to list them.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from mtljax.methods._base import (
    GradientTransform,
    GramWeighting,
    LossWeighting,
    Method,
    MethodOutput,
    check_input_tasks,
    check_num_tasks,
    gradient_transform,
    gram_weighting,
    hparam_aliases,
    loss_weighting,
    require_losses,
)


class MethodEntry(NamedTuple):
    module: str | None  # module under mtljax.methods; None when `factory` is the callable
    factory: str | Callable[..., Method]  # factory function name in `module`, or the factory
    presets: dict[str, Any]  # keyword arguments fixed by this registry name
    summary: str  # one line for `mtljax methods`
    paper: str  # short citation


def _e(module, factory, summary, paper, **presets) -> MethodEntry:
    return MethodEntry(module, factory, presets, summary, paper)


BUILTINS: dict[str, MethodEntry] = {
    # Loss weighting: one backward pass per step.
    "ew": _e("_ew", "ew", "equal weights, sum of the task losses", "linear scalarisation"),
    "mean": _e("_ew", "ew", "equal weights 1/T, mean of the task losses", "torchjd Mean",
               reduction="mean"),
    "sum": _e("_ew", "ew", "equal weights 1, sum of the task losses", "torchjd Sum",
              reduction="sum"),
    "fixed": _e("_fixed", "fixed", "fixed user-given task weights", "linear scalarisation"),
    "constant": _e("_fixed", "fixed", "fixed user-given task weights (torchjd name)",
                   "torchjd Constant"),
    "alternating": _e("_alternating", "alternating",
                      "one task per step, random or round-robin", "alternating training"),
    "uw": _e("_uw", "uw", "homoscedastic uncertainty weighting, learned log-variances",
             "Kendall et al., CVPR 2018"),
    "dwa": _e("_dwa", "dwa", "dynamic weight average of per-epoch loss ratios",
              "Liu et al., CVPR 2019"),
    "si": _e("_si", "si", "scale-invariant loss, sum of log losses", "Navon et al., ICML 2022"),
    "gls": _e("_gls", "gls", "geometric mean of the task losses", "Chennupati et al., CVPRW 2019"),
    "rlw": _e("_rlw", "rlw", "random loss weights, softmax of normal samples",
              "Lin et al., TMLR 2022"),
    "random": _e("_rlw", "rlw", "random gradient weights (RGW), softmax of normal samples",
                 "Lin et al., TMLR 2022; torchjd Random"),
    "imtl_l": _e("_imtl_l", "imtl_l", "IMTL-L: learned loss scales e^s L - s",
                 "Liu et al., ICLR 2021"),
    "stch": _e("_stch", "stch", "smooth Tchebycheff scalarisation with a nadir point",
               "Lin et al., ICML 2024"),
    "famo": _e("_famo", "famo", "fast adaptive multitask optimisation, log-loss balancing",
               "Liu et al., NeurIPS 2023"),
    # Gradient methods: per-task gradients (Jacobian or representation level).
    "gradnorm": _e("_gradnorm", "gradnorm", "GradNorm: learned weights balancing gradient norms",
                   "Chen et al., ICML 2018"),
    "pcgrad": _e("_pcgrad", "pcgrad", "project conflicting gradients, random order",
                 "Yu et al., NeurIPS 2020"),
    "mgda": _e("_mgda", "mgda", "min-norm point of the convex hull of task gradients",
               "Sener & Koltun, NeurIPS 2018"),
    "mgda_ub": _e("_mgda", "mgda", "MGDA on representation gradients (upper bound)",
                  "Sener & Koltun, NeurIPS 2018", level="representation"),
    "gradvac": _e("_gradvac", "gradvac", "gradient vaccine, EMA cosine targets per task pair",
                  "Wang et al., ICLR 2021"),
    "graddrop": _e("_graddrop", "graddrop", "sign-purity gradient dropout at the representation",
                   "Chen et al., NeurIPS 2020"),
    "cagrad": _e("_cagrad", "cagrad", "conflict-averse gradient descent",
                 "Liu et al., NeurIPS 2021"),
    "imtl_g": _e("_imtl", "imtl_g", "IMTL-G: equal projections of the update on unit gradients",
                 "Liu et al., ICLR 2021"),
    "imtl": _e("_imtl", "imtl", "IMTL hybrid: IMTL-G weights on IMTL-L scaled losses",
               "Liu et al., ICLR 2021"),
    "nash_mtl": _e("_nash_mtl", "nash_mtl", "Nash bargaining solution, G w = 1/w",
                   "Navon et al., ICML 2022"),
    "aligned_mtl": _e("_aligned_mtl", "aligned_mtl", "align the Jacobian's singular values",
                      "Senushkin et al., CVPR 2023"),
    "aligned_mtl_ub": _e("_aligned_mtl", "aligned_mtl", "Aligned-MTL on representation gradients",
                         "Senushkin et al., CVPR 2023", level="representation"),
    "upgrad": _e("_upgrad", "upgrad", "unconflicting projection of gradients onto the dual cone",
                 "Quinton & Rey, 2024"),
    "dualproj": _e("_dualproj", "dualproj", "projection of the mean gradient onto the dual cone",
                   "Quinton & Rey, 2024"),
    "config": _e("_config", "config", "ConFIG: conflict-free update from unit gradients",
                 "Liu et al., ICLR 2025"),
    "fairgrad": _e("_fairgrad", "fairgrad", "alpha-fair resource allocation of the update",
                   "Ban & Ji, ICML 2024"),
    "excess_mtl": _e("_excess_mtl", "excess_mtl", "robust weighting by excess risk",
                     "He et al., ICML 2024"),
    "moco": _e("_moco", "moco", "MoCo: momentum-tracked gradients, corrected MGDA weights",
               "Fernando et al., ICLR 2023"),
    "sdmgrad": _e("_sdmgrad", "sdmgrad", "stochastic direction-oriented MGDA, 3 batches",
                  "Xiao et al., NeurIPS 2023"),
    "modo": _e("_modo", "modo", "MoDo: double sampling MGDA, 3 batches",
               "Chen et al., NeurIPS 2023"),
    "db_mtl": _e("_db_mtl", "db_mtl", "dual balancing: log losses, EMA gradients, max-norm",
                 "Lin et al., 2023"),
    "krum": _e("_krum", "krum", "Krum: the task gradient(s) closest to the others",
               "Blanchard et al., NeurIPS 2017"),
    "trimmed_mean": _e("_trimmed_mean", "trimmed_mean", "coordinate-wise trimmed mean",
                       "Yin et al., ICML 2018"),
    "cr_mogm": _e("_cr_mogm", "cr_mogm", "CR-MOGM: EMA of any method's weights",
                  "Zhou et al., NeurIPS 2022"),
    # Task roles: primary and auxiliary tasks, priority levels.
    "pcd": _e("_pcd", "pcd",
              "priority-constrained descent: primary first, tau of progress per secondary",
              "PCD, TMLR 2026, arXiv:2606.29521"),
    "gradsim": _e("_gradsim", "gradsim",
                  "auxiliary gradients gated by their cosine with the primary gradient",
                  "Du et al., arXiv:1812.02224, 2018"),
    "lexicographic": _e("_lexicographic", "lexicographic",
                        "priority levels, each projected onto the higher levels' dual cone",
                        "Quinton & Rey, 2024 (projection); lexicographic task priority"),
}


# The built-ins and the user-registered methods, by name.
REGISTRY: dict[str, MethodEntry] = dict(BUILTINS)

_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def register_method(
    name: str,
    factory: Callable[..., Method],
    *,
    summary: str,
    paper: str,
    presets: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Adds a method to the registry, so that ``name`` works wherever a built-in's does.

    ``get_method(name, T, **hparams)`` then calls ``factory(T, **presets, **hparams)``;
    :func:`mtljax.aggregate`, the runner's ``method.name`` and ``mtljax methods`` go through it.

    Args:
      name: the registry name (letters, digits, ``_``, ``.``, ``-``).
      factory: ``(num_tasks, **hparams) -> Method``, e.g. built with :func:`gram_weighting`.
      summary: one line for ``mtljax methods``.
      paper: a short citation.
      presets: keyword arguments this name fixes (as ``mean`` fixes ``ew``'s reduction).
      overwrite: replace a method already registered under ``name`` (built-in or not).

    Raises:
      ValueError: a bad name, a factory that is not callable, presets the factory does not
        accept, or a name already registered without ``overwrite=True``.

    Example:
      >>> import jax.numpy as jnp, optax, mtljax
      >>> def unit_sum(num_tasks):
      ...     def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
      ...         return 1.0 / jnp.sqrt(jnp.diagonal(gram)), state
      ...     return mtljax.methods.gram_weighting("unit_sum", num_tasks, optax.EmptyState,
      ...                                          weights_fn)
      >>> mtljax.register_method("unit_sum", unit_sum, summary="sum of unit gradients",
      ...                        paper="-")
      >>> mtljax.aggregate("unit_sum", [[2.0, 0.0], [0.0, 4.0]]).tolist()
      [1.0, 1.0]
      >>> mtljax.unregister_method("unit_sum")
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"A method name is letters, digits, '_', '.' and '-', got {name!r}."
        )
    if not callable(factory):
        raise ValueError(
            f"register_method({name!r}): factory must be callable "
            f"(num_tasks, **hparams) -> Method, got {factory!r}."
        )
    for field, text in (("summary", summary), ("paper", paper)):
        if not isinstance(text, str):
            raise ValueError(f"register_method({name!r}): {field} must be a string.")
    presets = dict(presets or {})
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a callable without a signature: checked when called
        signature = None
    if signature is not None:
        try:
            signature.bind_partial(1, **presets)
        except TypeError as error:
            raise ValueError(
                f"register_method({name!r}): the factory cannot take presets {presets}: {error}."
            ) from None
    if name in REGISTRY and not overwrite:
        origin = "a built-in method" if REGISTRY[name] is BUILTINS.get(name) else "registered"
        raise ValueError(
            f"Method {name!r} already exists ({origin}); pass overwrite=True to replace it."
        )
    REGISTRY[name] = MethodEntry(None, factory, presets, summary, paper)


def unregister_method(name: str) -> None:
    """Removes a registered method; a replaced built-in gets its built-in entry back.

    Raises:
      ValueError: an unknown name, or a built-in that was not replaced.
    """
    entry = _entry(name)
    if name in BUILTINS:
        if entry is BUILTINS[name]:
            raise ValueError(f"Method {name!r} is built in and cannot be unregistered.")
        REGISTRY[name] = BUILTINS[name]
    else:
        del REGISTRY[name]


def method_names() -> list[str]:
    """Every registered method name: the built-ins in order, then the user's."""
    return list(REGISTRY)


def _entry(name: str) -> MethodEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown method {name!r}. Known methods: {', '.join(REGISTRY)}."
        ) from None


def _load(entry: MethodEntry) -> Callable[..., Method]:
    if entry.module is None:
        return entry.factory
    module = importlib.import_module(f"mtljax.methods.{entry.module}")
    return getattr(module, entry.factory)


def get_factory(name: str) -> Callable[..., Method]:
    """The factory function behind a registry name (presets not applied)."""
    return _load(_entry(name))


def get_method(name: str, num_tasks: int, **hparams) -> Method:
    """Builds the method registered as ``name`` for ``num_tasks`` tasks.

    Args:
      name: a registry name (see :func:`method_names`).
      num_tasks: T.
      **hparams: the factory's keyword arguments; a preset of the name cannot be overridden.

    Raises:
      ValueError: unknown name, an hparam that clashes with a preset, or a factory that
        returns no :class:`Method` for ``num_tasks`` tasks.
    """
    entry = _entry(name)
    clash = sorted(set(hparams) & set(entry.presets))
    if clash:
        raise ValueError(f"Method {name!r} fixes {clash}; use another registry name to change it.")
    method = _load(entry)(num_tasks, **entry.presets, **hparams)
    if not isinstance(method, Method):
        raise ValueError(
            f"The factory of method {name!r} returned {type(method).__name__}, not a "
            f"mtljax.methods.Method."
        )
    if method.num_tasks != num_tasks:
        raise ValueError(
            f"The factory of method {name!r} built it for {method.num_tasks} tasks, "
            f"not {num_tasks}."
        )
    return method


def __getattr__(attr: str):
    # `mtljax.methods.pcgrad(...)` builds from the built-in factory, without registry presets.
    if attr in BUILTINS and BUILTINS[attr].factory == attr:
        return _load(BUILTINS[attr])
    raise AttributeError(f"module 'mtljax.methods' has no attribute {attr!r}")


__all__ = [
    "BUILTINS",
    "REGISTRY",
    "GradientTransform",
    "GramWeighting",
    "LossWeighting",
    "Method",
    "MethodEntry",
    "MethodOutput",
    "check_input_tasks",
    "check_num_tasks",
    "get_factory",
    "get_method",
    "gradient_transform",
    "gram_weighting",
    "hparam_aliases",
    "loss_weighting",
    "method_names",
    "register_method",
    "require_losses",
    "unregister_method",
]
