"""A small pure-function multi-task model shared by the tests."""

import jax
import jax.numpy as jnp
import numpy as np

from mtljax import MultiTaskLoss, Tasks


def make_problem(num_tasks=3, dim=6, hidden=8, batch=32, seed=0, dtype=jnp.float32):
    """Returns (tasks, loss, params, batch): a 2-layer shared trunk and linear heads."""
    rng = np.random.default_rng(seed)
    tasks = Tasks([f"t{i}" for i in range(num_tasks)])
    params = {
        "shared": {
            "w1": jnp.asarray(rng.normal(size=(dim, hidden)) / np.sqrt(dim), dtype),
            "b1": jnp.zeros((hidden,), dtype),
        },
        "heads": {
            name: {"w": jnp.asarray(rng.normal(size=(hidden,)) / np.sqrt(hidden), dtype)}
            for name in tasks.names
        },
    }
    x = rng.normal(size=(batch, dim))
    true_w = rng.normal(size=(num_tasks, dim))
    y = np.tanh(x @ true_w.T) + 0.1 * rng.normal(size=(batch, num_tasks))
    data = {"x": jnp.asarray(x, dtype), "y": jnp.asarray(y, dtype)}

    def encode(params, batch):
        return jax.nn.tanh(batch["x"] @ params["shared"]["w1"] + params["shared"]["b1"])

    def decode(params, rep, batch):
        losses = {
            name: jnp.mean((rep @ params["heads"][name]["w"] - batch["y"][:, i]) ** 2)
            for i, name in enumerate(tasks.names)
        }
        return losses, {}

    return tasks, MultiTaskLoss(encode, decode), params, data
