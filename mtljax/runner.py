"""The experiment runner: one :class:`RunConfig` in, a trained model's metrics out.

:func:`run` builds the data, the NNX model (docs/architectures.md), the method and the
optimizer from a config, trains with the jitted functional step (:func:`mtljax.make_train_step`,
the state donated), and writes to ``config.workdir``:

* ``metrics.jsonl`` — one JSON object per logged step: ``step``, per-task ``losses`` and
  ``weights`` keyed by task name, ``skipped``, and on diagnostics steps the Gram diagnostics
  (``cosine`` ``[T, T]``, ``conflict_fraction``, ``grad_norms``, ``magnitude_similarity``,
  ``update_norm``, ``update_cosine``); evaluation lines carry ``val`` instead.
* ``summary.json`` — the config, per-task validation and test metrics at the selected
  checkpoint, the selected step, wall time and steps per second.
* ``tb/`` — TensorBoard event files with the same scalars (:mod:`mtljax.tensorboard`), when
  ``tensorboard`` is on and tensorboardX is installed.

Model selection uses the validation split only: the parameters with the best mean headline
metric over tasks (each task's first metric, negated when lower is better) are kept, and the
test split is evaluated once, at that checkpoint.

Diagnostics need the Jacobian, which a loss-only method otherwise skips (one backward pass):
every ``diagnostics_every`` steps a second compiled step with ``diagnostics=True`` runs, the
cheap one otherwise, so EW and friends stay one-backward in between.

Non-finite losses or gradients: the step flags the task(s) in ``metrics["nonfinite"]``. With
``nonfinite="raise"`` the update is skipped and :func:`run` raises a ``RuntimeError`` naming
the step and task(s) at the next log flush (at most ``log_every`` steps later); with ``"skip"``
or ``"zero"`` the event is logged to ``metrics.jsonl`` and counted in the summary.

Checkpoints: with ``checkpoint_every = N`` the full run state goes to ``workdir/checkpoints``
every N steps and after the last (:mod:`mtljax.checkpoint`); ``run(..., resume=True)`` (``mtljax
run ... --resume``) continues from the latest one, truncating ``metrics.jsonl`` back to its step,
and ends with the same parameters and metrics as an uninterrupted run (docs/checkpoints.md).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mtljax import objectives
from mtljax.checkpoint import Checkpointer, truncate_jsonl
from mtljax.methods import get_method
from mtljax.metrics_log import JsonlWriter, to_json
from mtljax.models.registry import ARCHITECTURES, build_architecture
from mtljax.nnx_bridge import check_level, model_loss, model_predict, split_params
from mtljax.tasks import Metric, Task, Tasks
from mtljax.tensorboard import open_tensorboard
from mtljax.train import NONFINITE_POLICIES, init_train_state, make_train_step

# Dataset loaders by name: (module, function); imported on first use.
DATASETS: dict[str, tuple[str, str]] = {
    "multidigits": ("mtljax.data.multidigits", "load_multidigits"),
}
MODELS = tuple(ARCHITECTURES)
OPTIMIZERS = ("adam", "sgd")
# Evaluation metrics of classification tasks, by the name a Task's Metric declares.
EVAL_METRICS: dict[str, Callable] = {
    "accuracy": objectives.accuracy,
    "cross_entropy": objectives.softmax_cross_entropy,
}
DEFAULT_METRICS = (Metric("accuracy", True),)


@dataclasses.dataclass
class RunConfig:
    """Everything one training run depends on.

    Attributes:
      dataset: a name in :data:`DATASETS`.
      dataset_kw: keyword arguments of the dataset loader (besides ``seed``).
      data_seed: the dataset's seed (splits, composition); fixed across compared runs.
      model: an architecture in :data:`MODELS`: ``"mlp"``, ``"cnn"`` and ``"resnet"`` are hard
        sharing on that trunk; ``"soft_sharing"``, ``"cross_stitch"``, ``"mmoe"``,
        ``"dselect_k"``, ``"cgc"``, ``"ple"``, ``"mtan"`` and ``"cascade"`` the multi-task
        architectures of docs/architectures.md. ``model_kw`` holds its options
        (:func:`mtljax.models.registry.build_architecture`).
      hidden: the MLP's hidden widths.
      cnn_features, cnn_out: the CNN's convolution channels and output width.
      method: a registry name (``mtljax methods``); ``method_kw`` its hyper-parameters.
      tasks: a subset of the dataset's task names (e.g. one task for a single-task
        baseline); ``None`` for all.
      steps, batch_size: training steps and batch size.
      optimizer, lr: ``"adam"`` or ``"sgd"`` and the (constant) learning rate.
      seed: initialisation and batch-order seed.
      eval_every: validation every this many steps (and after the last step).
      eval_batch_size: the evaluation batch size.
      log_every: a ``metrics.jsonl`` line every this many steps.
      diagnostics_every: a diagnostics step every this many steps; 0 for none.
      nonfinite: ``"raise"``, ``"skip"`` or ``"zero"`` (see the module docstring).
      level: ``"parameters"``, ``"representation"`` or ``None`` for the method's own.
      workdir: where the outputs go; ``None`` writes nothing.
      checkpoint_every: a checkpoint every this many steps and after the last; 0 for none
        (needs a ``workdir``).
      keep_checkpoints: how many of the latest checkpoints to keep.
      tensorboard: also write TensorBoard event files to ``workdir/tb`` when tensorboardX is
        installed (ignored without it).
    """

    dataset: str = "multidigits"
    dataset_kw: dict = dataclasses.field(default_factory=dict)
    data_seed: int = 0
    model: str = "mlp"
    model_kw: dict = dataclasses.field(default_factory=dict)
    hidden: tuple[int, ...] = (128, 128)
    cnn_features: tuple[int, ...] = (16, 32)
    cnn_out: int = 64
    method: str = "ew"
    method_kw: dict = dataclasses.field(default_factory=dict)
    tasks: tuple[str, ...] | None = None
    steps: int = 1000
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    seed: int = 0
    eval_every: int = 250
    eval_batch_size: int = 1024
    log_every: int = 10
    diagnostics_every: int = 50
    nonfinite: str = "raise"
    level: str | None = None
    workdir: str | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    tensorboard: bool = True

    def __post_init__(self):
        for name in ("hidden", "cnn_features", "tasks"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if value is not None:
                setattr(self, name, tuple(value))
        if self.dataset not in DATASETS:
            raise ValueError(f"Unknown dataset {self.dataset!r}; known: {list(DATASETS)}.")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"nonfinite must be one of {NONFINITE_POLICIES}, got {self.nonfinite!r}."
            )
        names = ("steps", "batch_size", "eval_every", "eval_batch_size", "log_every")
        for name in (*names, "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("diagnostics_every", "checkpoint_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}.")
        if not all(isinstance(d, dict) for d in (self.method_kw, self.dataset_kw, self.model_kw)):
            raise ValueError("method_kw, dataset_kw and model_kw must be dicts.")

    def replace(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with ``overrides`` applied; ``"method_kw.c"`` sets a key of a dict field.

        Raises:
          ValueError: an unknown field, or a dotted key into a field that is not a dict.
        """
        fields = {f.name for f in dataclasses.fields(self)}
        values = dataclasses.asdict(self)
        for key, value in overrides.items():
            name, _, sub = key.partition(".")
            if name not in fields:
                raise ValueError(f"Unknown config field {name!r}; fields: {sorted(fields)}.")
            if sub:
                if not isinstance(values[name], dict):
                    raise ValueError(f"{name!r} is not a dict field; cannot set {key!r}.")
                values[name] = {**values[name], sub: value}
            else:
                values[name] = value
        return RunConfig(**values)


def as_config(config: RunConfig | Mapping[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from itself or a dict of its fields."""
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, Mapping):
        return RunConfig().replace(dict(config))
    raise TypeError(f"Expected a RunConfig or a dict, got {type(config).__name__}.")


def load_dataset(config: RunConfig):
    """The dataset of ``config`` (a ``MultiTaskDataset``)."""
    module, function = DATASETS[config.dataset]
    loader = getattr(importlib.import_module(module), function)
    return loader(seed=config.data_seed, **config.dataset_kw)


def _select_tasks(all_tasks: Tasks, names: Sequence[str] | None) -> Tasks:
    if names is None:
        return all_tasks
    return Tasks([all_tasks[all_tasks.index(name)] for name in names])


def _task_metrics(task: Task) -> tuple[Metric, ...]:
    metrics = task.metrics or DEFAULT_METRICS
    unknown = [m.name for m in metrics if m.name not in EVAL_METRICS]
    if unknown:
        raise ValueError(
            f"Task {task.name!r} declares metrics {unknown} the runner cannot compute; "
            f"known: {list(EVAL_METRICS)}."
        )
    return metrics


def build_model(config: RunConfig, input_shape: Sequence[int], head_dims: Mapping[str, int]):
    """The NNX model ``config.model`` with the options ``config.model_kw``."""
    return build_architecture(
        config.model,
        input_shape,
        head_dims,
        hidden=config.hidden,
        cnn_features=config.cnn_features,
        cnn_out=config.cnn_out,
        rngs=nnx.Rngs(config.seed),
        **config.model_kw,
    )


def build_optimizer(config: RunConfig) -> optax.GradientTransformation:
    return optax.adam(config.lr) if config.optimizer == "adam" else optax.sgd(config.lr)


def _make_evaluator(predict, tasks: Tasks, batch_size: int):
    """``evaluate(params, arrays) -> {task: {metric: value}}`` over padded batches."""
    from mtljax.data.loader import eval_batches

    @jax.jit
    def batch_sums(params, batch):
        outputs = predict(params, batch["x"])
        count = jnp.sum(jnp.asarray(batch["mask"], jnp.float32))
        sums = {
            t.name: {
                m.name: EVAL_METRICS[m.name](outputs[t.name], batch[t.name], batch["mask"]) * count
                for m in _task_metrics(t)
            }
            for t in tasks
        }
        return sums, count

    def evaluate(params, arrays):
        totals, count = None, 0.0
        for batch in eval_batches(arrays, batch_size):
            sums, n = jax.device_get(batch_sums(params, batch))
            totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
            count += float(n)
        return {t: {m: float(v) / count for m, v in ms.items()} for t, ms in totals.items()}

    return evaluate


def selection_score(metrics: Mapping[str, Mapping[str, float]], tasks: Tasks) -> float:
    """The mean over tasks of each task's headline metric, signed so that higher is better."""
    scores = []
    for task in tasks:
        headline = _task_metrics(task)[0]
        value = metrics[task.name][headline.name]
        scores.append(value if headline.higher_is_better else -value)
    return float(np.mean(scores))


# Config fields a resumed run may change: they do not alter the steps already taken.
RESUMABLE_FIELDS = ("steps", "workdir", "checkpoint_every", "keep_checkpoints", "tensorboard")


def _check_resumable(saved: Mapping[str, Any], config: RunConfig) -> None:
    current = to_json(dataclasses.asdict(config))
    # A field added since the checkpoint was written counts as saved with its default.
    saved = {**to_json(dataclasses.asdict(RunConfig())), **saved}
    changed = sorted(
        k
        for k in current.keys() | saved.keys()
        if k not in RESUMABLE_FIELDS and current.get(k) != saved.get(k)
    )
    if changed:
        raise ValueError(
            f"The checkpoint was saved with a different config (fields {changed}); only "
            f"{list(RESUMABLE_FIELDS)} may change on resume."
        )


def _show_progress() -> bool:
    return not os.environ.get("CI") and sys.stderr.isatty()


def _progress_bar(total: int, desc: str, enabled: bool | None):
    enabled = _show_progress() if enabled is None else enabled
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
    return None


def _step_record(step: int, metrics: Mapping[str, Any], tasks: Tasks) -> dict:
    """One ``metrics.jsonl`` line from the host copy of a step's metrics."""
    names = tasks.names
    record = {
        "step": step,
        "losses": dict(zip(names, np.asarray(metrics["losses"]).tolist(), strict=True)),
        "weights": dict(zip(names, to_json(metrics["weights"]), strict=True)),
        "skipped": bool(metrics["skipped"]),
    }
    flagged = [n for n, bad in zip(names, np.asarray(metrics["nonfinite"]), strict=True) if bad]
    if flagged:
        record["nonfinite"] = flagged
    for key in ("grad_norms", "update_cosine"):
        if key in metrics:
            record[key] = dict(zip(names, to_json(metrics[key]), strict=True))
    for key in ("cosine", "magnitude_similarity", "conflict_fraction", "update_norm"):
        if key in metrics:
            record[key] = to_json(metrics[key])
    if metrics.get("aux"):
        record["aux"] = to_json(metrics["aux"])
    return record


def run(
    config: RunConfig | Mapping[str, Any],
    *,
    data=None,
    progress: bool | None = None,
    resume: bool = False,
) -> dict:
    """Trains and evaluates one configuration; see the module docstring.

    Args:
      config: a :class:`RunConfig` or a dict of its fields.
      data: the dataset, already loaded with :func:`load_dataset` for this config (saves
        reloading it when several runs share it); loaded from the config by default.
      progress: show a tqdm bar; by default only on a terminal and when ``CI`` is unset.
      resume: continue from the latest checkpoint in ``workdir/checkpoints`` (from scratch
        when there is none); the config may differ from the saved one only in
        :data:`RESUMABLE_FIELDS`.

    Returns:
      The summary (also written to ``workdir/summary.json``): ``config``, ``tasks``,
      ``higher_is_better`` (``{task: {metric: bool}}``, for :func:`mtljax.evaluation.delta_m`),
      ``val`` and ``test`` (``{task: {metric: value}}`` at ``best_step``), ``final_val``,
      ``nonfinite_steps``, ``wall_time_s``, ``train_time_s`` (the training loop without
      evaluation, compilation included), ``steps_per_s`` (steps run by this call over
      ``train_time_s``), ``resumed_from`` (the checkpoint's step, 0 for a fresh run) and
      ``tensorboard`` (whether ``workdir/tb`` event files were written).

    Raises:
      RuntimeError: a non-finite loss or gradient under ``nonfinite="raise"``, naming the
        step and the task(s).
      ValueError: ``checkpoint_every`` or ``resume`` without a ``workdir``; a checkpoint
        saved with a different config.
    """
    config = as_config(config)
    if (config.checkpoint_every or resume) and not config.workdir:
        raise ValueError("checkpoint_every and resume need a workdir.")
    start = time.perf_counter()
    from mtljax.data.loader import BatchIterator

    data = load_dataset(config) if data is None else data
    tasks = _select_tasks(data.tasks, config.tasks)
    model = build_model(config, data.input_shape, {t: data.num_classes[t] for t in tasks.names})
    graphdef, params, rest = split_params(model)

    def task_losses_fn(outputs, batch):
        losses = {t: objectives.softmax_cross_entropy(outputs[t], batch[t]) for t in tasks.names}
        accuracies = {t: objectives.accuracy(outputs[t], batch[t]) for t in tasks.names}
        return losses, {"accuracy": accuracies}

    loss = model_loss(graphdef, rest, task_losses_fn)
    method = get_method(config.method, len(tasks), **config.method_kw)
    check_level(model, config.level or method.level)
    optimizer = build_optimizer(config)
    # The step donates its state: give every leaf its own buffer (an init may use one array for
    # two fields, and XLA refuses to donate a buffer twice).
    state = jax.tree.map(jnp.copy, init_train_state(params, optimizer, method))

    def compiled(diagnostics):
        step = make_train_step(
            loss,
            tasks,
            method,
            optimizer,
            level=config.level,
            nonfinite=config.nonfinite,
            diagnostics=diagnostics,
        )
        return jax.jit(step, donate_argnums=0)

    cheap_step = compiled(False)
    diag_step = compiled(True) if config.diagnostics_every else None
    evaluate = _make_evaluator(model_predict(graphdef, rest), tasks, config.eval_batch_size)
    keep = ["x", *tasks.names]
    splits = {name: {k: data.splits[name][k] for k in keep} for name in ("train", "val", "test")}
    batches = BatchIterator(splits["train"], config.batch_size, seed=config.seed)

    best = {"score": -math.inf, "step": 0, "params": None, "val": None}
    pending: list[tuple[int, Any]] = []
    nonfinite_steps = 0
    eval_time = 0.0
    last_val = None
    resumed_from = 0
    checkpoints = None
    if config.checkpoint_every or resume:
        checkpoints = Checkpointer(
            os.path.join(config.workdir, "checkpoints"), keep=config.keep_checkpoints
        )
    if resume and checkpoints.latest_step() is not None:
        arrays, saved = checkpoints.restore({"train_state": state, "best_params": state.params})
        _check_resumable(saved["config"], config)
        state, resumed_from = arrays["train_state"], int(saved["step"])
        batches.restore(saved["iterator"])
        best_params = jax.device_get(arrays["best_params"]) if saved["has_best"] else None
        best.update(saved["best"], params=best_params)
        nonfinite_steps, last_val = saved["nonfinite_steps"], saved["last_val"]

    def save_checkpoint(step):
        has_best = best["params"] is not None
        meta = {
            "step": step,
            "config": to_json(dataclasses.asdict(config)),
            "iterator": batches.state(),
            "best": {"score": best["score"], "step": best["step"], "val": best["val"]},
            "has_best": has_best,
            "nonfinite_steps": nonfinite_steps,
            "last_val": last_val,
        }
        arrays = {"train_state": state, "best_params": best["params"] if has_best else state.params}
        checkpoints.save(step, arrays, meta)

    metrics_path = os.path.join(config.workdir, "metrics.jsonl") if config.workdir else None
    if resumed_from:
        truncate_jsonl(metrics_path, resumed_from)
    writer = JsonlWriter(metrics_path, append=bool(resumed_from)) if metrics_path else None
    tb = None
    if config.workdir and config.tensorboard:
        purge = resumed_from + 1 if resumed_from else None  # hide the resumed steps' old events
        tb = open_tensorboard(os.path.join(config.workdir, "tb"), tasks.names, purge_step=purge)
    bar = _progress_bar(config.steps, config.method, progress)
    if bar is not None:
        bar.update(resumed_from)

    def flush():
        nonlocal nonfinite_steps
        for step, metrics in jax.device_get(pending):
            bad = np.asarray(metrics["nonfinite"])
            if bad.any():
                nonfinite_steps += 1
                names = [n for n, b in zip(tasks.names, bad, strict=True) if b]
                if config.nonfinite == "raise":
                    raise RuntimeError(
                        f"Non-finite loss or gradient at step {step} in task(s) {names} "
                        f"(method {config.method!r}); the update was skipped. Set "
                        'nonfinite="skip" or "zero" to continue past it.'
                    )
            if writer and (
                step % config.log_every == 0 or step == 1 or "cosine" in metrics or bad.any()
            ):
                record = _step_record(step, metrics, tasks)
                writer.write(record)
                if tb:
                    tb.write(record)
            if bar is not None:
                latest = np.asarray(metrics["losses"])
                bar.set_postfix({t: f"{v:.3f}" for t, v in zip(tasks.names, latest, strict=True)},
                                refresh=False)
        pending.clear()

    def validate(step):
        nonlocal last_val, eval_time
        tick = time.perf_counter()
        last_val = evaluate(state.params, splits["val"])
        score = selection_score(last_val, tasks)
        if writer:
            writer.write({"step": step, "val": last_val})
        if tb:
            tb.write({"step": step, "val": last_val})
        # The first evaluation always counts, so a run whose scores are all NaN still has one.
        if best["params"] is None or score > best["score"]:
            best.update(score=score, step=step, params=jax.device_get(state.params), val=last_val)
        eval_time += time.perf_counter() - tick

    loop_start = time.perf_counter()
    try:
        for step in range(resumed_from + 1, config.steps + 1):
            batch = (
                next(batches)
                if method.num_batches == 1
                else tuple(next(batches) for _ in range(method.num_batches))
            )
            diagnose = diag_step is not None and (step == 1 or step % config.diagnostics_every == 0)
            state, metrics = (diag_step if diagnose else cheap_step)(state, batch)
            pending.append((step, metrics))
            if step % config.log_every == 0 or step == config.steps:
                flush()
            if step % config.eval_every == 0 or step == config.steps:
                flush()
                validate(step)
            every = config.checkpoint_every
            if every and (step % every == 0 or step == config.steps):
                flush()
                save_checkpoint(step)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if writer:
            writer.close()
        if tb:
            tb.close()

    train_time = time.perf_counter() - loop_start - eval_time
    test = evaluate(best["params"], splits["test"])
    wall = time.perf_counter() - start
    summary = {
        "config": dataclasses.asdict(config),
        "tasks": list(tasks.names),
        "higher_is_better": {
            t.name: {m.name: m.higher_is_better for m in _task_metrics(t)} for t in tasks
        },
        "best_step": best["step"],
        "val": best["val"],
        "test": test,
        "final_val": last_val,
        "nonfinite_steps": nonfinite_steps,
        "wall_time_s": wall,
        "train_time_s": train_time,
        "steps_per_s": (config.steps - resumed_from) / train_time,
        "resumed_from": resumed_from,
        "tensorboard": tb is not None,
    }
    if config.workdir:
        with open(os.path.join(config.workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(to_json(summary), f, indent=2)
    return summary
