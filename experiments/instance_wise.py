"""Instance-wise multi-task learning: every sample (and task) a row of the Gram matrix.

Commands::

    python -m experiments.instance_wise iwrm          # corrupted-label regression
    python -m experiments.instance_wise multidigits   # instance-wise MultiDigits

``iwrm``: instance-wise risk minimisation (one task, per-sample losses ``[B]``). A regression
target ``y = sin(x·u) + 0.1 ε`` with a fraction of the training labels replaced by outliers
(+8, far outside the clean range). The same MLP is trained with the mean loss (ERM) and with
UPGrad and MGDA over the B per-sample rows (``instance_wise=True``, Gramian engine). Reports the
clean test MSE and the share of the total row weight that corrupted samples get (their share
of the rows is the corruption rate): does a non-conflicting update protect the clean samples?

``multidigits``: MultiDigits (two digit tasks) with rows per (task, sample): the mean over the
rows (ordinary EW, up to a factor) against UPGrad over the rows. Reports per-task test
accuracy.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtljax
from mtljax.tables import format_table


def corrupted_regression(seed: int, *, n_train=512, n_test=1024, dim=16, corrupt=0.1):
    """``(train, test, corrupted mask)``: ``y = sin(x·u) + 0.1 ε``; a ``corrupt`` share of
    the training labels set to +8."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=dim) / np.sqrt(dim)

    def draw(n):
        x = rng.normal(size=(n, dim))
        return x, np.sin(2.0 * x @ u) + 0.1 * rng.normal(size=n)

    (x, y), (xt, yt) = draw(n_train), draw(n_test)
    bad = rng.random(n_train) < corrupt
    y = np.where(bad, 8.0, y)
    return (x.astype(np.float32), y.astype(np.float32)), (xt.astype(np.float32),
                                                          yt.astype(np.float32)), bad


def mlp_params(seed: int, sizes=(16, 64, 64, 1)):
    rng = np.random.default_rng(seed + 1000)
    layers = [{"w": jnp.asarray(rng.normal(size=(a, b)) * np.sqrt(2.0 / a), jnp.float32),
               "b": jnp.zeros((b,), jnp.float32)}
              for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    return {"shared": layers[:-1], "heads": layers[-1]}


def predict(params, x):
    h = x
    for layer in params["shared"]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    return (h @ params["heads"]["w"] + params["heads"]["b"])[:, 0]


def iwrm_run(method: str, seed: int, *, steps: int, batch: int, lr: float) -> dict:
    """One IWRM run: clean test MSE and the corrupted samples' share of the row weight."""
    (x, y), (xt, yt), bad = corrupted_regression(seed)
    tasks = mtljax.Tasks(["y"])
    loss = mtljax.MultiTaskLoss(
        lambda p, b: None,
        lambda p, rep, b: ({"y": (predict(p, b["x"]) - b["y"]) ** 2}, {}),
    )
    weighting = mtljax.get_method(method, num_tasks=batch)
    opt = optax.adam(lr)
    step = jax.jit(mtljax.make_train_step(loss, tasks, weighting, opt, instance_wise=True,
                                          diagnostics=False))
    state = mtljax.init_train_state(mlp_params(seed), opt, weighting)
    rng = np.random.default_rng(seed + 1)
    bad_weight = total_weight = 0.0
    for _ in range(steps):
        idx = rng.choice(len(x), batch, replace=False)
        state, metrics = step(state, {"x": x[idx], "y": y[idx]})
        weights = np.abs(np.asarray(metrics["row_weights"][0]))
        bad_weight += float(np.sum(weights[bad[idx]]))
        total_weight += float(np.sum(weights))
    mse = float(jnp.mean((predict(state.params, xt) - yt) ** 2))
    return {"method": method, "seed": seed, "test_mse": mse,
            "corrupted_weight_share": bad_weight / max(total_weight, 1e-30),
            "corrupted_row_share": float(np.mean(bad))}


def multidigits_run(method: str, seed: int, *, steps: int, batch: int, lr: float) -> dict:
    """One instance-wise MultiDigits run (MLP trunk 144→128→128, two linear heads): per-task
    test accuracy."""
    from mtljax.data.registry import load_dataset

    data = load_dataset("multidigits", seed=seed)
    train, test = data.splits["train"], data.splits["test"]
    names = data.tasks.names
    rng = np.random.default_rng(seed + 1000)

    def dense(a, b):
        return {"w": jnp.asarray(rng.normal(size=(a, b)) * np.sqrt(2.0 / a), jnp.float32),
                "b": jnp.zeros((b,), jnp.float32)}

    params = {"shared": [dense(144, 128), dense(128, 128)],
              "heads": {n: dense(128, data.num_classes[n]) for n in names}}

    def logits(p, x):
        h = x.reshape(x.shape[0], -1)
        for layer in p["shared"]:
            h = jax.nn.relu(h @ layer["w"] + layer["b"])
        return {n: h @ p["heads"][n]["w"] + p["heads"][n]["b"] for n in names}

    def decode(p, rep, b):
        out = logits(p, b["x"])
        return {n: optax.softmax_cross_entropy_with_integer_labels(out[n], b[n])
                for n in names}, {}

    tasks = mtljax.Tasks(names)
    weighting = mtljax.get_method(method, num_tasks=len(names) * batch)
    opt = optax.adam(lr)
    step = jax.jit(mtljax.make_train_step(mtljax.MultiTaskLoss(lambda p, b: None, decode),
                                          tasks, weighting, opt, instance_wise=True,
                                          diagnostics=False))
    state = mtljax.init_train_state(params, opt, weighting)
    order = np.random.default_rng(seed + 1)
    for _ in range(steps):
        idx = order.choice(len(train["x"]), batch, replace=False)
        state, _ = step(state, {k: v[idx] for k, v in train.items()})
    out = logits(state.params, jnp.asarray(test["x"], jnp.float32))
    row = {"method": method, "seed": seed}
    for n in names:
        row[f"{n}_accuracy"] = float(np.mean(np.argmax(np.asarray(out[n]), -1) == test[n]))
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["iwrm", "multidigits"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", default=None, help="JSON rows written here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = []
    if args.command == "iwrm":
        for method in ("mean", "upgrad", "mgda"):
            for seed in range(args.seeds):
                rows.append(iwrm_run(method, seed, steps=args.steps, batch=args.batch,
                                     lr=args.lr))
                print(json.dumps(rows[-1]), flush=True)
        table = _summarise(rows, ("test_mse", "corrupted_weight_share"))
    else:
        for method in ("mean", "upgrad"):
            for seed in range(args.seeds):
                rows.append(multidigits_run(method, seed, steps=args.steps, batch=args.batch,
                                            lr=args.lr))
                print(json.dumps(rows[-1]), flush=True)
        table = _summarise(rows, tuple(k for k in rows[0] if k.endswith("accuracy")))
    print(table)
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


def _summarise(rows, keys) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    body = []
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        body.append([m] + [f"{np.mean([r[k] for r in mine]):.4f} ± "
                           f"{np.std([r[k] for r in mine]):.4f}" for k in keys])
    return format_table(["method", *keys], body)


if __name__ == "__main__":
    main()
