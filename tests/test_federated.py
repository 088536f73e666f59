"""Task-private (federated) training: equal to the pooled step, and sending only what it says.

The model and data are those of ``experiments/federated.py`` (a tanh trunk, one linear head per
task, each task its own synthetic inputs). Every party's batch has ``BATCH = 37`` examples per
task, a prime that is no dimension of anything else here (5 inputs, width 12, P = 228 shared
parameters, T ≤ 4), so a collective carrying a batch-sized array cannot go unnoticed.
"""

import concurrent.futures
import functools
import re
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import experiments.federated as fx
import mtljax
from mtljax import federated, launch, parallel

BATCH = 37
EXAMPLE = Path(fx.__file__)
JOB_TIMEOUT = 150  # seconds, per launched job; ~10-30 s on 2 busy cores
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-11, atol=1e-12)}


def args_for(num_tasks: int, **kw):
    return fx.parse_args(["--tasks", str(num_tasks), "--batch", str(BATCH),
                          *[f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]])


def setting(name, owners, dtype, local_head_steps=0):
    """``(step, mesh, state, args, party heads, table)`` of one federated run."""
    args = args_for(len(owners), local_head_steps=local_head_steps)
    parties = federated.Parties(owners, "party")
    shared, heads = fx.init_params(args, np.dtype(dtype))
    party_heads = fx.stack([fx.stack([heads[t] for t in row]) for row in parties.table])
    method = mtljax.get_method(name, len(owners))
    opt = optax.adam(0.05)
    step = federated.make_federated_step(fx.loss_fn, [f"t{i}" for i in range(len(owners))],
                                         method, opt, owners=owners,
                                         local_head_steps=local_head_steps)
    mesh = parallel.data_mesh(jax.devices()[: parties.num_parties], axis_name="party")
    state = federated.place_state(
        federated.init_federated_state(shared, party_heads, opt, method), mesh)
    return step, mesh, state, args, party_heads, parties.table


@functools.cache
def trained(name, owners, dtype, steps=2):
    """Federated (compiled once) and pooled runs of ``steps`` steps, and the compiled step."""
    step, mesh, state, args, party_heads, table = setting(name, owners, dtype)
    batches = [fx.party_batches(range(len(table)), table, i, args, np.dtype(dtype))
               for i in range(steps)]
    compiled = federated.federated_on_mesh(step, mesh).lower(
        state, federated.place_parties(batches[0], mesh)).compile()
    ctx = step.context
    loss = mtljax.MultiTaskLoss.from_fn(federated.pooled_loss(fx.loss_fn, owners))
    pooled = jax.jit(mtljax.make_train_step(loss, [f"t{i}" for i in range(len(owners))],
                                            ctx.method, step.optimizer, diagnostics=False,
                                            level="parameters", strategy="vmap"))
    reference = mtljax.init_train_state({"shared": state.shared, "heads": party_heads},
                                        step.optimizer, ctx.method)
    for batch in batches:
        state, metrics = compiled(state, federated.place_parties(batch, mesh))
        reference, ref_metrics = pooled(reference, batch)
    return step, compiled, (state, metrics), (reference, ref_metrics)


CASES = [  # (method, owners, dtype): the exchange is "loss", "gram", "rows"
    ("dwa", (1, 0, 1, 0), "float64"),
    ("imtl_g", (2, 0, 3, 1), "float64"),
    ("graddrop", (0, 1, 2, 3), "float32"),
]


@pytest.mark.parametrize("name, owners, dtype", CASES)
def test_synchronous_step_equals_the_pooled_step(name, owners, dtype):
    """Two steps: every party's shared parameters, its heads, the losses and the weights
    equal ``make_train_step`` on the pooled batch (task t's loss on its owner's batch)."""
    _, _, (state, metrics), (reference, ref_metrics) = trained(name, owners, dtype)
    assert state.shared["w1"].dtype == np.dtype(dtype)
    pairs = {"shared": (state.shared, reference.params["shared"]),
             "heads": (state.heads, reference.params["heads"]),
             "losses": (metrics["losses"], ref_metrics["losses"]),
             "weights": (metrics["weights"], ref_metrics["weights"])}
    for key, (got, want) in pairs.items():
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), err_msg=key, **TOL[dtype])
    assert not metrics["skipped"]


def collective_shapes(hlo: str) -> list[tuple[int, ...]]:
    """The shape of every array a collective of the optimised HLO produces."""
    shapes = []
    for line in hlo.splitlines():
        match = re.search(r"=\s*(.+?)\s+(all-reduce|all-gather|reduce-scatter|"
                          r"collective-permute|all-to-all)(-start|-done)?\(", line)
        if match:
            for dims in re.findall(r"\b(?:pred|[a-z]+\d+)\[([\d,]*)\]", match[1]):
                shapes.append(tuple(int(d) for d in dims.split(",") if d))
    return shapes


@pytest.mark.parametrize("name, owners, dtype", CASES)
def test_bytes_follow_the_formula_and_no_batch_leaves(name, owners, dtype):
    """The compiled step's collectives carry exactly the formula's bytes, and none of them
    an array with a batch-sized dimension (or a size that is a multiple of the batch)."""
    step, compiled, _, _ = trained(name, owners, dtype)
    shared_size = 5 * 12 + 12 + 12 * 12 + 12
    measured = parallel.collective_bytes(compiled)
    assert measured == step.bytes_per_step(shared_size, np.dtype(dtype).itemsize)
    shapes = collective_shapes(compiled.as_text())
    assert shapes, "the step must communicate"
    for shape in shapes:
        assert BATCH not in shape and int(np.prod(shape)) % BATCH, shape


def test_local_head_steps_send_nothing_and_freeze_the_shared_parameters():
    """A local step compiles to no collective, leaves the shared parameters and the step
    counter as they were and moves every head; a round of 2 local steps and a synchronous one
    is those three steps in a row and sends what the synchronous step sends."""
    owners = (0, 1, 2, 3)
    step, mesh, state, args, _, table = setting("upgrad", owners, "float32",
                                                local_head_steps=2)
    batch = federated.place_parties(fx.party_batches(range(4), table, 0, args, np.float32), mesh)
    one = jax.tree.map(lambda x: x[:, 0], batch)
    local = federated.federated_on_mesh(step.local_step, mesh).lower(state, one).compile()
    assert parallel.collective_bytes(local) == {"total": 0}
    after, _ = local(state, one)
    assert int(after.step) == 0
    for a, b in zip(jax.tree.leaves(after.shared), jax.tree.leaves(state.shared), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(after.heads), jax.tree.leaves(state.heads), strict=True):
        assert np.all(np.any(np.asarray(a) != np.asarray(b), axis=tuple(range(1, a.ndim))))
    round_step = federated.federated_on_mesh(step, mesh).lower(state, batch).compile()
    assert parallel.collective_bytes(round_step) == step.bytes_per_step(228, 4)
    by_hand, _ = local(after, jax.tree.map(lambda x: x[:, 1], batch))
    sync = federated.federated_on_mesh(step.sync_step, mesh)
    by_hand, _ = sync(by_hand, jax.tree.map(lambda x: x[:, 2], batch))
    rounded, metrics = round_step(state, batch)
    assert int(rounded.step) == 1 and not metrics["skipped"]
    for a, b in zip(jax.tree.leaves(rounded), jax.tree.leaves(by_hand), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_invalid_settings_raise():
    method = mtljax.get_method("upgrad", 4)
    opt = optax.sgd(0.1)
    with pytest.raises(ValueError, match="same number of tasks"):
        federated.make_federated_step(fx.loss_fn, list("abcd"), method, opt, owners=(0, 0, 0, 1))
    with pytest.raises(ValueError, match="a party for each"):
        federated.make_federated_step(fx.loss_fn, list("abcd"), method, opt, owners=(0, 1))
    with pytest.raises(ValueError, match="runs on the exchanges"):
        federated.make_federated_step(fx.loss_fn, list("abcd"), method, opt,
                                      owners=(0, 1, 2, 3), exchange="loss")
    two_parties = federated.make_federated_step(fx.loss_fn, list("abcd"), method, opt,
                                                owners=(0, 0, 1, 1))
    _, mesh, state, args, _, table = setting("upgrad", (0, 1, 2, 3), "float32")
    batch = federated.place_parties(fx.party_batches(range(4), table, 0, args, np.float32), mesh)
    with pytest.raises(ValueError, match="has 4 devices"):
        federated.federated_on_mesh(two_parties, mesh).lower(state, batch)


def test_example_under_launch_equals_the_pooled_run(tmp_path, monkeypatch):
    """``mtljax launch`` (:func:`mtljax.launch.launch_local`) of the example with 2 processes
    (float64, UPGrad) and 4 processes (float32, MGDA), one task each, run side by side: every
    process's shared parameters and its own heads equal the single-process pooled run, each
    process holds only its own heads, and the bytes it measured equal the formula."""
    for var in (launch.ENV_COORDINATOR, launch.ENV_NUM_PROCESSES, launch.ENV_PROCESS_ID,
                launch.ENV_LOCAL_DEVICES):
        monkeypatch.delenv(var, raising=False)
    jobs = {2: ("--tasks", "2", "--dtype", "float64", "--method", "upgrad"),
            4: ("--tasks", "4", "--dtype", "float32", "--method", "mgda")}
    common = ("--steps", "3", "--batch", str(BATCH))
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        codes = {n: pool.submit(launch.launch_local,
                                [sys.executable, str(EXAMPLE), *common, *args,
                                 "--out", str(tmp_path / str(n))],
                                n, devices_per_process=1, timeout=JOB_TIMEOUT)
                 for n, args in jobs.items()}
        pooled = {n: fx.run_pooled(fx.parse_args([*common, "--pooled", *args]))
                  for n, args in jobs.items()}
        codes = {n: future.result() for n, future in codes.items()}
    for n, args in jobs.items():
        assert codes[n] == [0] * n
        for i in range(n):
            got = dict(np.load(tmp_path / str(n) / f"process{i}.npz"))
            assert {k for k in got if k.startswith("heads/")} == {
                f"heads/task{i}/w", f"heads/task{i}/b"}
            for kind in ("all-gather", "all-reduce", "collective-permute", "total"):
                assert got[f"bytes/measured/{kind}"] == got[f"bytes/formula/{kind}"], kind
            for key, value in got.items():
                if not key.startswith("bytes/"):
                    np.testing.assert_allclose(value, pooled[n][key], err_msg=key,
                                               **TOL[args[3]])
