"""The configs shipped with mtljax, and the loader of any config.

A config is a Python module with ``get_config(arg=None)``, returning a
:class:`~mtljax.config.RunConfig`, a mapping of its fields (nested, or the flat names of
:data:`mtljax.config.ALIASES`), or a built-in benchmark (:mod:`mtljax.benchmarks`, which runs
itself). Its docstring states the command that runs it, the expected runtime and the expected
result. ``mtljax configs`` lists the shipped ones; ``mtljax configs NAME`` shows one's fields.

:func:`load` finds a config by its name in this package (so it is found after ``pip install``,
from any directory), by the path of a ``.py`` file, or as an importable module. A config file
may register a method (:func:`mtljax.register_method`) or a dataset at import: loading the
config runs that registration, so ``mtljax run`` and ``mtljax sweep`` see the new name.
"""

from __future__ import annotations

import ast
import importlib
import importlib.resources
import importlib.util
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from mtljax.config import ConfigError, RunConfig, as_config


def names() -> list[str]:
    """The shipped configs' names."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def summary(name: str) -> str:
    """The first line of a shipped config's docstring (read without importing it)."""
    source = importlib.resources.files(__name__).joinpath(f"{name}.py").read_text("utf-8")
    return (ast.get_docstring(ast.parse(source)) or "").split("\n")[0]


def _module(name: str) -> ModuleType:
    path = Path(name)
    if path.suffix == ".py":
        if not path.is_file():
            raise ValueError(f"No config file {name}.")
        spec = importlib.util.spec_from_file_location(f"_mtljax_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    if name in names():
        return importlib.import_module(f"{__name__}.{name}")
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ValueError(
            f"No config {name!r}: not a shipped config ({', '.join(names())}), not a .py file, "
            "not an importable module."
        ) from None


def load(spec: str) -> RunConfig | Any:
    """``get_config(ARG)`` of the config ``NAME[:ARG]`` (a shipped name, a path or a module).

    Returns:
      A :class:`~mtljax.config.RunConfig` (a returned mapping is converted), or the benchmark
      the config returns (anything with ``run`` and ``table``).

    Raises:
      ValueError: no such config, or no ``get_config`` in it.
      ConfigError: ``get_config`` returned something else (naming its file and line).
    """
    name, _, arg = spec.partition(":")
    module = _module(name)
    if not hasattr(module, "get_config"):
        raise ValueError(f"Config {name!r} has no get_config(arg=None) function.")
    config = module.get_config(arg or None)
    if hasattr(config, "run") and hasattr(config, "table"):
        return config
    if not isinstance(config, RunConfig | Mapping):
        code = module.get_config.__code__
        raise ConfigError(
            f"{code.co_filename}, line {code.co_firstlineno}: get_config returned "
            f"{type(config).__name__}; it must return a RunConfig, a dict of its fields or a "
            "benchmark."
        )
    return as_config(config)
