"""Synthetic token sequences whose targets are defined by different features of the sequence.

Each sequence has ``length`` tokens drawn uniformly from ``1 .. vocab_size − 1`` (0 is padding
and is not drawn). Two binary classification targets read different features:

* ``presence``: whether token ``PRESENT_TOKEN`` occurs anywhere (an "any" feature);
* ``parity``: whether token ``PARITY_TOKEN`` occurs an odd number of times (a counting
  feature that no bag-of-words linear model can represent).

Both are functions of the sequence alone, so an encoder that solves them must represent both
features. The model is :class:`~mtljax.models.SequenceEncoder` (embeddings, one Transformer
block, mean pooling) followed by a ReLU layer, shared by the two tasks, with a linear head each
(hard sharing), trained with each method and Adam. The benchmark reports test accuracy per
task and method, against the majority-class rate.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mtljax import objectives
from mtljax.benchmarks._base import BenchmarkConfig, sample_batches, scan_train, write_summary
from mtljax.models import MLP, HardSharing, SequenceEncoder
from mtljax.nnx_bridge import model_loss, model_predict, split_params
from mtljax.tables import format_table

PRESENT_TOKEN = 3
PARITY_TOKEN = 5
TASKS = ("presence", "parity")


def make_data(n: int, *, vocab_size: int = 16, length: int = 12, seed: int = 0):
    """``{"x": tokens [n, length] int32, "presence": [n], "parity": [n]}`` (labels int32)."""
    if vocab_size <= max(PRESENT_TOKEN, PARITY_TOKEN):
        raise ValueError(f"vocab_size must exceed {max(PRESENT_TOKEN, PARITY_TOKEN)}.")
    rng = np.random.default_rng(seed)
    x = rng.integers(1, vocab_size, size=(n, length)).astype(np.int32)
    return {
        "x": x,
        "presence": (x == PRESENT_TOKEN).any(1).astype(np.int32),
        "parity": ((x == PARITY_TOKEN).sum(1) % 2).astype(np.int32),
    }


class TextTrunk(nnx.Module):
    """A :class:`~mtljax.models.SequenceEncoder`, then a ReLU layer: ``[B, L]`` → ``[B, D]``."""

    def __init__(self, vocab_size: int, features: int, length: int, *, rngs: nnx.Rngs):
        self.encoder = SequenceEncoder(
            vocab_size, features=features, max_length=length, pad_id=0, rngs=rngs
        )
        self.mlp = MLP(features, (features,), rngs=rngs)
        self.out_features = features

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.mlp(self.encoder(tokens))


@dataclasses.dataclass(frozen=True)
class Text(BenchmarkConfig):
    """Settings of the text benchmark.

    Attributes:
      methods: registry names to compare; method_kw: their hyper-parameters.
      vocab_size, length: the token alphabet (0 is padding) and the sequence length.
      features: the encoder width.
      n_train, n_test, steps, batch_size, lr: data sizes and Adam training.
      seed: data, initialisation and batch seed.
    """

    methods: tuple[str, ...] = ("ew", "mgda", "pcgrad")
    method_kw: dict = dataclasses.field(default_factory=dict)
    vocab_size: int = 16
    length: int = 12
    features: int = 32
    n_train: int = 8_000
    n_test: int = 2_000
    steps: int = 2_000
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0

    name = "text"

    def run(self, workdir: str | None = None) -> dict[str, Any]:
        """Trains each method from the same initialisation; returns (and writes) the summary."""
        data = make_data(
            self.n_train + self.n_test,
            vocab_size=self.vocab_size,
            length=self.length,
            seed=self.seed,
        )
        train = {k: jnp.asarray(v[: self.n_train]) for k, v in data.items()}
        test = {k: jnp.asarray(v[self.n_train :]) for k, v in data.items()}
        rngs = nnx.Rngs(self.seed)
        model = HardSharing(
            TextTrunk(self.vocab_size, self.features, self.length, rngs=rngs),
            {t: 2 for t in TASKS},
            rngs=rngs,
        )

        def task_losses(outputs, batch):
            return {t: objectives.softmax_cross_entropy(outputs[t], batch[t]) for t in TASKS}, {}

        graphdef, params, rest = split_params(model)
        loss, predict = model_loss(graphdef, rest, task_losses), model_predict(graphdef, rest)

        @jax.jit
        def accuracies(params):
            out = predict(params, test["x"])
            return {t: objectives.accuracy(out[t], test[t]) for t in TASKS}

        batch_fn = sample_batches(self.batch_size, self.n_train)

        summary = {
            "benchmark": self.name,
            "config": dataclasses.asdict(self),
            "majority_rate": {t: float(max(np.mean(data[t]), 1 - np.mean(data[t]))) for t in TASKS},
            "methods": {},
        }
        for method in self.methods:
            tick = time.perf_counter()
            final, _ = scan_train(
                loss,
                TASKS,
                method,
                self.method_kw.get(method, {}),
                optax.adam(self.lr),
                params,
                batch_fn,
                train,
                self.steps,
                jax.random.key(self.seed),
            )
            summary["methods"][method] = {
                "test_accuracy": {t: float(v) for t, v in accuracies(final).items()},
                "time_s": time.perf_counter() - tick,
            }
        return write_summary(workdir, summary)

    def table(self, summary: dict) -> str:
        """One row per method: test accuracy per task (majority-class rate in the header)."""
        majority = summary["majority_rate"]
        headers = ["method", *(f"{t} (majority {majority[t]:.2f})" for t in TASKS), "s"]
        rows = [
            [m, *(r["test_accuracy"][t] for t in TASKS), round(r["time_s"], 1)]
            for m, r in summary["methods"].items()
        ]
        return format_table(headers, rows)
