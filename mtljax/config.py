"""Run configurations: five frozen sections, typed dotted overrides, and one alias table.

A :class:`RunConfig` holds everything one training run depends on::

    data       name, root, kwargs, seed, tasks,       which dataset (mtljax.data.registry),
               primary, levels                        which tasks, and their roles
    model      name, kwargs                           which architecture (mtljax.models.registry)
    method     name, kw                               which MTL method (mtljax methods)
    optimizer  name, lr, kw                           which optax optimizer
    schedule   steps, batch_size, eval_every, ...     how long, how often
    seed, level, nonfinite, workdir, tensorboard      the run's own options

Every field is typed, and its type is checked (and, for text, parsed) when a config is built,
so a command-line value and a Python value go through the same check: ``--set
schedule.steps=20`` and ``config.replace({"schedule.steps": 20})`` give the same config, while
``schedule.steps=abc``, ``=5.5`` or ``=true`` fail with ``schedule.steps expects an integer,
got 'abc'``. A key into a free-form dict field (``method.kw.c``, ``model.kwargs.hidden``)
takes any JSON value (text that is not JSON stays a string).

Field metadata says, once, which fields are *outputs* (where and how results are written:
they may differ between runs whose results are compared, and on resume) and which may change
on resume; :data:`OUTPUT_FIELDS` and :data:`RESUMABLE_FIELDS` are derived from it, and the
runner, the sweep and the report read them. Defaults live only in the dataclasses below.

The flat names of mtljax 0.1 (``steps``, ``method_kw.c``, ``dataset_kw``, ``hidden``...) are
accepted as aliases of their new paths (:data:`ALIASES`), in overrides and in stored configs.

Example:
  >>> config = RunConfig().replace({"schedule.steps": "20", "method": "pcgrad", "lr": 0.01})
  >>> config.schedule.steps, config.method.name, config.optimizer.lr
  (20, 'pcgrad', 0.01)
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from mtljax.metrics_log import to_json
from mtljax.train import NONFINITE_POLICIES

LEVELS = ("parameters", "representation")


class ConfigError(ValueError):
    """A user's input is invalid: a config field or override, a config file, a workdir.

    The command line prints it as one line naming what was wrong and how to fix it, and exits
    with status 2 (the argparse convention for usage errors); the library raises it like any
    ``ValueError``.
    """


def _field(
    default,
    help: str,
    *,
    minimum=None,
    positive=False,
    choices=None,
    output=False,
    resumable=False,
):
    """A dataclass field with its help text and constraints.

    ``minimum``: the least integer allowed; ``positive``: a number > 0; ``choices``: the values
    allowed besides ``None``. ``output``: the field says where or how results are written, not
    what they are. ``resumable``: besides the outputs, the field may change on resume.
    """
    meta = {
        "help": help,
        "minimum": minimum,
        "positive": positive,
        "choices": choices,
        "output": output,
        "resumable": resumable or output,
    }
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _section(cls):
    return dataclasses.field(default_factory=cls, metadata={"help": cls.__doc__.split("\n")[0]})


class _Checked:
    """Checks and converts every field on construction (see :func:`coerce`)."""

    _prefix = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            path = self._prefix + field.name
            value = coerce(path, hints[field.name], getattr(self, field.name))
            _check_range(path, field.metadata, value)
            object.__setattr__(self, field.name, value)


@dataclasses.dataclass(frozen=True)
class DataConfig(_Checked):
    """The dataset: a name of mtljax.data.registry and its loader's arguments."""

    _prefix = "data."
    name: str = _field("multidigits", "a registered dataset (mtljax datasets lists them)")
    root: str | None = _field(None, "the folder of an on-disk dataset")
    kwargs: dict[str, Any] = _field(dict, "further keyword arguments of the dataset's loader")
    seed: int = _field(0, "the dataset's seed (splits, composition), fixed across runs")
    tasks: tuple[str, ...] | None = _field(None, "a subset of the tasks; null for all")
    primary: tuple[str, ...] | None = _field(
        None, "the primary tasks (level 0), the others auxiliary (level 1); null: all primary"
    )
    levels: dict[str, int] = _field(
        dict, "task priority levels, 0 highest (overrides data.primary): {task: level}", minimum=0
    )


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Checked):
    """The architecture: a name of mtljax.models.registry and its options."""

    _prefix = "model."
    name: str | None = _field(None, "an architecture; null for the dataset's default model")
    kwargs: dict[str, Any] = _field(
        dict, "options: hidden, cnn_features, cnn_out (trunk sizes), the architecture's own"
    )


@dataclasses.dataclass(frozen=True)
class MethodConfig(_Checked):
    """The multi-task method: a registry name (mtljax methods) and its hyper-parameters."""

    _prefix = "method."
    name: str = _field("ew", "a registered method")
    kw: dict[str, Any] = _field(dict, "the method's hyper-parameters")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(_Checked):
    """The optax optimizer and its constant learning rate."""

    _prefix = "optimizer."
    name: str = _field("adam", "adam, adamw or sgd")
    lr: float = _field(1e-3, "the learning rate", positive=True)
    kw: dict[str, Any] = _field(dict, "further optax arguments (b1, weight_decay, momentum...)")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(_Checked):
    """How long to train and how often to evaluate, log, diagnose and checkpoint."""

    _prefix = "schedule."
    steps: int = _field(1000, "training steps", minimum=1, resumable=True)
    batch_size: int = _field(128, "training batch size", minimum=1)
    eval_every: int = _field(250, "validate every this many steps (and after the last)", minimum=1)
    eval_batch_size: int = _field(1024, "evaluation batch size", minimum=1)
    log_every: int = _field(10, "a metrics.jsonl line every this many steps", minimum=1)
    diagnostics_every: int = _field(
        50, "Gram diagnostics every this many steps; 0: none", minimum=0
    )
    checkpoint_every: int = _field(
        0, "a checkpoint every this many steps; 0: none", minimum=0, output=True
    )
    keep_checkpoints: int = _field(3, "how many checkpoints to keep", minimum=1, output=True)


@dataclasses.dataclass(frozen=True)
class RunConfig(_Checked):
    """Everything one training run depends on (see the module docstring)."""

    data: DataConfig = _section(DataConfig)
    model: ModelConfig = _section(ModelConfig)
    method: MethodConfig = _section(MethodConfig)
    optimizer: OptimizerConfig = _section(OptimizerConfig)
    schedule: ScheduleConfig = _section(ScheduleConfig)
    seed: int = _field(0, "initialisation and batch-order seed")
    level: str | None = _field(
        None, "parameters, representation, or null for the method's own", choices=LEVELS
    )
    nonfinite: str = _field(
        "raise",
        "on a NaN/Inf loss or gradient: raise, skip_step or drop_task",
        choices=NONFINITE_POLICIES,
    )
    workdir: str | None = _field(None, "the output folder; null writes nothing", output=True)
    tensorboard: bool = _field(
        True, "also write TensorBoard events (needs tensorboardX)", output=True
    )

    def replace(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with ``overrides`` (``{dotted path or alias: value}``) applied in order.

        A section given a mapping (``{"schedule": {"steps": 5}}``) sets those of its fields;
        a dict field given a mapping is replaced whole; ``"method.kw.c"`` sets one key.

        Raises:
          ConfigError: an unknown field, or a value of the wrong type (naming the field).
        """
        tree = dataclasses.asdict(self)
        for key, value in overrides.items():
            whole = key in _SECTIONS and isinstance(parse_value(value), Mapping)
            _assign(tree, RunConfig, key if whole else canonical_path(key), value)
        return RunConfig(**tree)

    def to_dict(self) -> dict[str, Any]:
        """The nested JSON form (tuples as lists), as stored in ``summary.json``."""
        return to_json(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """A config from its nested form, flat 0.1 names, or both (defaults elsewhere)."""
        return cls().replace(values)


def as_config(config: RunConfig | Mapping[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from itself or a mapping (:meth:`RunConfig.from_dict`)."""
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, Mapping):
        return RunConfig.from_dict(config)
    raise TypeError(f"Expected a RunConfig or a dict, got {type(config).__name__}.")


# The flat field names of mtljax 0.1, by their path today. A section name given a plain value
# sets the section's name (``method=pcgrad``).
ALIASES: dict[str, str] = {
    "dataset": "data.name",
    "dataset_kw": "data.kwargs",
    "data_seed": "data.seed",
    "tasks": "data.tasks",
    "model": "model.name",
    "model_kw": "model.kwargs",
    "hidden": "model.kwargs.hidden",
    "cnn_features": "model.kwargs.cnn_features",
    "cnn_out": "model.kwargs.cnn_out",
    "method": "method.name",
    "method_kw": "method.kw",
    "optimizer": "optimizer.name",
    "lr": "optimizer.lr",
    **{
        name: f"schedule.{name}"
        for name in (
            "steps",
            "batch_size",
            "eval_every",
            "eval_batch_size",
            "log_every",
            "diagnostics_every",
            "checkpoint_every",
            "keep_checkpoints",
        )
    },
}


def canonical_path(key: str) -> str:
    """``key`` with an alias for its first part replaced: ``method_kw.c`` -> ``method.kw.c``.

    A section name followed by a field (``method.kw``) is not an alias.
    """
    head, dot, rest = key.strip().partition(".")
    if head in ALIASES and not (dot and head in _SECTIONS):
        return ALIASES[head] + dot + rest
    return key.strip()


def _assign(tree: dict, cls: type, path: str, value: Any, done: str = "") -> None:
    """Sets ``path`` in ``tree`` (the ``dataclasses.asdict`` form of a ``cls``)."""
    name, _, rest = path.partition(".")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        where = f"{done[:-1]} fields" if done else "sections and options"
        raise ConfigError(
            f"Unknown config field {done + name!r}; {where}: {', '.join(fields)} "
            "(mtljax configs CONFIG lists every field)."
        )
    hint = typing.get_type_hints(cls)[name]
    if dataclasses.is_dataclass(hint):
        if rest:
            _assign(tree[name], hint, rest, value, f"{done}{name}.")
            return
        value = parse_value(value) if isinstance(value, str) else value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{done + name} expects a JSON object of its fields, got {value!r}.")
        for key, sub in value.items():
            _assign(tree[name], hint, key, sub, f"{done}{name}.")
    elif rest:
        if _base(hint) is not dict:
            raise ConfigError(f"{done + name} is not a dict field; cannot set {done + path!r}.")
        tree[name] = {**(tree[name] or {}), rest: parse_value(value)}
    else:
        tree[name] = value


_SECTIONS = tuple(
    name
    for name, hint in typing.get_type_hints(RunConfig).items()
    if dataclasses.is_dataclass(hint)
)


def parse_value(value: Any) -> Any:
    """A JSON literal when ``value`` is text holding one, else ``value`` itself."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _base(hint):
    """``X`` of ``X | None``; the origin of a generic (``dict[str, Any]`` -> ``dict``)."""
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def type_name(hint) -> str:
    """How ``--help`` writes a field's type: ``int``, ``list[str] | null``, ``dict``..."""
    if isinstance(hint, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is tuple:
        return f"list[{type_name(typing.get_args(hint)[0])}]"
    if dataclasses.is_dataclass(hint):
        return "section"
    if typing.get_origin(hint) is dict and typing.get_args(hint)[1] is not Any:
        return f"dict[str, {type_name(typing.get_args(hint)[1])}]"
    return getattr(_base(hint), "__name__", str(hint))


_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_EXPECTED = {
    int: "an integer",
    float: "a number",
    bool: "true or false (or yes/no, 1/0)",
    str: "a string",
    dict: "a JSON object",
}


def coerce(path: str, hint, value: Any) -> Any:
    """``value`` checked against the type ``hint`` of field ``path``; text is parsed.

    Integers refuse booleans and fractions (``5.5``), numbers refuse booleans, booleans take
    ``true``/``false``, ``yes``/``no`` or ``1``/``0`` as text (nothing else), lists take JSON
    lists or comma-separated text (``a,b`` or ``[a, b]``), a typed dict (``dict[str, int]``)
    checks each value (named ``<path>.<key>``), ``null``/``none`` is ``None`` where the type
    allows it.

    Raises:
      ConfigError: ``<path> expects <what>, got <value>``.
    """
    shown = value  # the value as given, for the error message
    if isinstance(hint, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            tree = dataclasses.asdict(hint())
            for key, sub in value.items():
                _assign(tree, hint, key, sub, f"{path}.")
            return hint(**tree)
        raise ConfigError(f"{path} expects a JSON object of its fields, got {value!r}.")
    base = typing.get_origin(hint) or hint
    if base is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, str):
            parsed = parse_value(value)
            # Unquoted shell text: "[a, b]" (not JSON) and "a,b" both mean ["a", "b"].
            text = value.strip().removeprefix("[").removesuffix("]")
            value = parsed if isinstance(parsed, list) else [v.strip() for v in text.split(",")]
        if isinstance(value, list | tuple):
            return tuple(coerce(f"{path}[{i}]", item, v) for i, v in enumerate(value))
        raise ConfigError(f"{path} expects a list of {type_name(item)}, got {shown!r}.")
    if base is dict and typing.get_args(hint)[1:] not in ((), (Any,)):
        value = coerce(path, dict, value)
        item = typing.get_args(hint)[1]
        return {key: coerce(f"{path}.{key}", item, v) for key, v in value.items()}
    if base is bool and isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    if base in (int, float, dict) and isinstance(value, str):
        value = parse_value(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, Mapping),
    }[base]
    if not ok:
        raise ConfigError(f"{path} expects {_EXPECTED[base]}, got {shown!r}.")
    return {float: float, dict: dict}.get(base, lambda v: v)(value)


def _check_range(path: str, meta: Mapping[str, Any], value: Any) -> None:
    minimum, choices = meta.get("minimum"), meta.get("choices")
    if meta.get("positive") and not value > 0:
        raise ConfigError(f"{path} must be positive, got {value}.")
    if minimum is not None:
        # A dict field's bound holds for each of its values (data.levels.<task> >= 0).
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        for key, item in items:
            if item < minimum:
                where = path if key is None else f"{path}.{key}"
                bound = "a positive integer" if minimum == 1 else f">= {minimum}"
                raise ConfigError(f"{where} must be {bound}, got {item}.")
    if choices and value is not None and value not in choices:
        raise ConfigError(f"{path} must be one of {', '.join(choices)}; got {value!r}.")


def fields(config: RunConfig | None = None) -> list[tuple[str, Any, Any, Any, str]]:
    """``(path, type, default, value, help)`` of every leaf field, sections flattened."""
    config = config or RunConfig()
    default = RunConfig()
    rows = []
    for field in dataclasses.fields(RunConfig):
        hint = typing.get_type_hints(RunConfig)[field.name]
        if dataclasses.is_dataclass(hint):
            section_hints = typing.get_type_hints(hint)
            for sub in dataclasses.fields(hint):
                rows.append(
                    (
                        f"{field.name}.{sub.name}",
                        section_hints[sub.name],
                        getattr(getattr(default, field.name), sub.name),
                        getattr(getattr(config, field.name), sub.name),
                        sub.metadata["help"],
                    )
                )
        else:
            rows.append(
                (
                    field.name,
                    hint,
                    getattr(default, field.name),
                    getattr(config, field.name),
                    field.metadata["help"],
                )
            )
    return rows


def _paths(flag: str) -> tuple[str, ...]:
    metas = {f.name: f.metadata for f in dataclasses.fields(RunConfig)}
    for section in _SECTIONS:
        cls = typing.get_type_hints(RunConfig)[section]
        metas.update({f"{section}.{f.name}": f.metadata for f in dataclasses.fields(cls)})
    return tuple(sorted(path for path, meta in metas.items() if meta.get(flag)))


# Fields that say where and how results are written: ignored when runs' results are compared.
OUTPUT_FIELDS = _paths("output")
# Fields a resumed run may change: the outputs and ``schedule.steps``.
RESUMABLE_FIELDS = _paths("resumable")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"method": {"kw": {"c": 0.4}}}`` -> ``{"method.kw.c": 0.4}`` (dicts all the way; an
    empty dict gives no key)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stored_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The nested JSON form of a config read back from a file, flat 0.1 names included."""
    return RunConfig.from_dict(values).to_dict()


def changed_fields(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Sequence[str]) -> list[str]:
    """The dotted paths where the stored configs ``a`` and ``b`` differ, outside ``ignore``."""
    flat_a, flat_b = flatten(stored_config(a)), flatten(stored_config(b))
    return sorted(
        k
        for k in flat_a.keys() | flat_b.keys()
        if k not in ignore and flat_a.get(k) != flat_b.get(k)
    )


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b.c=x"]`` -> ``{"a": "1", "b.c": "x"}``: the text is parsed per field later.

    Raises:
      ConfigError: an item without ``=`` or without a key.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}.")
        out[key.strip()] = value
    return out
