"""The dataset registry: every built-in loads from its tiny on-disk fixture with typed tasks;
clear errors; datasets a user registers."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fixtures.datasets import (
    write_celeba,
    write_cityscapes,
    write_nyuv2,
    write_office31,
    write_office_home,
)
from flax import nnx

import mtljax
from mtljax import nnx_bridge
from mtljax.data import (
    DATASETS,
    MultiInputDataset,
    MultiInputIterator,
    MultiTaskDataset,
    dataset_entry,
    dataset_names,
    load_dataset,
    register_dataset,
    unregister_dataset,
)
from mtljax.metrics import evaluate, task_losses
from mtljax.models import MLP, HardSharing, multi_input_loss
from mtljax.models.registry import ARCHITECTURES, DENSE_ARCHITECTURES
from mtljax.tasks import Tasks, classification, regression

BUILTIN = ("multidigits", "nyuv2", "cityscapes", "celeba", "office31", "office_home")


def kinds(tasks):
    """``{task: (dense, output_dim, metric names)}``."""
    return {t.name: (t.dense, t.output_dim, tuple(m.name for m in t.metrics)) for t in tasks}


NORMAL_METRICS = ("mean_angle", "median_angle", "within_11.25", "within_22.5", "within_30")
SCENES = {
    "segmentation": ("miou", "pixel_accuracy"),
    "depth": ("abs_err", "rel_err"),
    "normal": NORMAL_METRICS,
}


def test_builtin_entries():
    assert dataset_names()[: len(BUILTIN)] == list(BUILTIN)
    for name in BUILTIN:
        entry = dataset_entry(name)
        assert entry.default_model in ARCHITECTURES and entry.summary
        assert entry.multi_input == name.startswith("office")
        assert entry.needs_root == (name != "multidigits")
        assert (entry.default_model in DENSE_ARCHITECTURES) == (name in ("nyuv2", "cityscapes"))


def test_scenes_load_from_their_fixtures(tmp_path):
    write_nyuv2(tmp_path / "nyuv2")
    write_cityscapes(tmp_path / "cityscapes")
    nyu = load_dataset("nyuv2", root=str(tmp_path / "nyuv2"), seed=0)
    assert isinstance(nyu, MultiTaskDataset) and nyu.input_shape == (16, 24, 3)
    assert kinds(nyu.tasks) == {
        "segmentation": (True, 13, SCENES["segmentation"]),
        "depth": (True, 1, SCENES["depth"]),
        "normal": (True, 3, SCENES["normal"]),
    }
    assert {s: len(a["x"]) for s, a in nyu.splits.items()} == {"train": 3, "val": 1, "test": 3}
    city = load_dataset("cityscapes", root=str(tmp_path / "cityscapes"), val_fraction=0)
    assert kinds(city.tasks) == {
        "segmentation": (True, 7, SCENES["segmentation"]),
        "depth": (True, 1, SCENES["depth"]),
    }
    assert city.splits["train"]["segmentation"].shape == (4, 16, 32)


def test_image_datasets_load_from_their_fixtures(tmp_path):
    pytest.importorskip("PIL")
    write_celeba(tmp_path / "celeba")
    celeba = load_dataset("celeba", root=str(tmp_path / "celeba"), image_size=(8, 8), seed=3)
    assert len(celeba.tasks) == 40 and celeba.input_shape == (8, 8, 3)
    assert set(kinds(celeba.tasks).values()) == {(False, 2, ("accuracy",))}
    write_office31(tmp_path / "office31")
    office = load_dataset("office31", root=str(tmp_path / "office31"), image_size=(8, 8))
    assert isinstance(office, MultiInputDataset)
    assert kinds(office.tasks) == dict.fromkeys(
        ("amazon", "dslr", "webcam"), (False, 3, ("accuracy",))
    )
    list_dir = write_office_home(tmp_path / "office_home", lists=True)
    home = load_dataset(
        "office_home", root=str(tmp_path / "office_home"), image_size=(8, 8), list_dir=list_dir
    )
    assert home.tasks.names == ("Art", "Clipart", "Product", "Real_World")
    assert home.sizes("train") == dict.fromkeys(home.tasks.names, 6)  # 2 of 5 per class


def test_errors_name_the_dataset_option_and_layout(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset 'nyu'; known: multidigits, nyuv2"):
        load_dataset("nyu")
    with pytest.raises(ValueError, match=r"'nyuv2' is read from disk: set its root \(data.root"):
        load_dataset("nyuv2")
    with pytest.raises(FileNotFoundError, match="'celeba': root .*nowhere is not a directory.*"):
        load_dataset("celeba", root=str(tmp_path / "nowhere"))
    write_cityscapes(tmp_path / "city", n_train=2, n_test=1)
    os.rename(tmp_path / "city" / "val" / "depth", tmp_path / "city" / "val" / "disparity")
    with pytest.raises(FileNotFoundError, match=r"val/depth.*\(dataset 'cityscapes' expects"):
        load_dataset("cityscapes", root=str(tmp_path / "city"))
    with pytest.raises(ValueError, match="'cityscapes' has no option sise; its options: "):
        load_dataset("cityscapes", root=str(tmp_path / "city"), sise=(16, 32))
    with pytest.raises(ValueError, match="'multidigits' is built in memory and takes no root"):
        load_dataset("multidigits", root=str(tmp_path))


def toy(*, seed, n=6):
    """A one-task regression dataset (a user's loader)."""
    rng = np.random.default_rng(seed)
    splits = {
        s: {"x": rng.normal(size=(n, 2)).astype(np.float32), "y": rng.normal(size=(n, 1))}
        for s in ("train", "val", "test")
    }
    return MultiTaskDataset(Tasks([regression("y")]), splits, {}, (2,))


def test_user_datasets_register_replace_and_unregister():
    register_dataset("toy", toy, default_model="mlp", summary="a toy regression")
    try:
        assert dataset_names()[-1] == "toy" and not dataset_entry("toy").needs_root
        data = load_dataset("toy", seed=1, n=4)
        assert data.splits["train"]["x"].shape == (4, 2)
        np.testing.assert_array_equal(data.splits["val"]["y"], toy(seed=1, n=4).splits["val"]["y"])
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("toy", toy, default_model="mlp", summary="again")
        register_dataset("toy", toy, default_model="cnn", summary="again", overwrite=True)
        assert dataset_entry("toy").default_model == "cnn"
    finally:
        unregister_dataset("toy")
    assert "toy" not in DATASETS
    with pytest.raises(ValueError, match="unknown default_model 'segnet'"):
        register_dataset("toy", toy, default_model="segnet", summary="")
    with pytest.raises(ValueError, match="A dataset name is"):
        register_dataset("my data", toy, default_model="mlp", summary="")
    with pytest.raises(ValueError, match="built in and cannot be unregistered"):
        unregister_dataset("nyuv2")
    # A built-in replaced by the user comes back when the replacement is unregistered.
    register_dataset("celeba", toy, default_model="mlp", summary="mine", overwrite=True)
    assert load_dataset("celeba").tasks.names == ("y",)
    unregister_dataset("celeba")
    assert dataset_entry("celeba").default_model == "resnet"
    # The entry's kind is checked against what the loader returns.
    register_dataset("toy", toy, default_model="mlp", summary="", multi_input=True)
    try:
        with pytest.raises(ValueError, match="returned a MultiTaskDataset, expected a Multi"):
            load_dataset("toy")
    finally:
        unregister_dataset("toy")


def test_multi_input_training_and_evaluation_through_the_adapter():
    rng = np.random.default_rng(0)
    names = ("a", "b")
    tasks = Tasks([classification(t, 3) for t in names])
    splits = {
        s: {
            t: {"x": rng.normal(size=(n, 4)).astype(np.float32), "y": rng.integers(0, 3, n)}
            for t, n in zip(names, (10, 6), strict=True)
        }
        for s in ("train", "val", "test")
    }
    data = MultiInputDataset(tasks, splits, dict.fromkeys(names, 3), (4,))
    model = HardSharing(MLP(4, (8,), rngs=nnx.Rngs(0)), {t: 3 for t in names}, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx_bridge.split_params(model)
    loss = multi_input_loss(graphdef, rest, task_losses(tasks, with_metrics=False))
    batch = jax.tree.map(
        jnp.asarray, next(MultiInputIterator(splits["train"], {"a": 4, "b": 2}, seed=0))
    )
    # Task t's loss reads task t's inputs only: it equals the one-task loss on them.
    losses, aux = loss.decode(params, loss.encode(params, batch), batch)
    for t in names:
        alone = task_losses(Tasks([tasks[tasks.index(t)]]), with_metrics=False)
        want, _ = alone({t: model(batch[t]["x"])[t]}, {t: batch[t]["y"]})
        np.testing.assert_allclose(losses[t], want[t], rtol=1e-6)
    assert aux["present"].tolist() == [True, True]
    method = mtljax.get_method("pcgrad", 2)
    opt = optax.adam(1e-2)
    state = mtljax.init_train_state(params, opt, method)
    step = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, diagnostics=False))
    first = None
    for _ in range(20):
        state, metrics = step(state, batch)
        first = np.asarray(metrics["losses"]) if first is None else first
    assert np.all(np.asarray(metrics["losses"]) < first)
    # Evaluation: each task on its own split, as a one-task dataset.
    predict = nnx_bridge.model_predict(graphdef, rest)
    for t in names:
        result = evaluate(
            Tasks([tasks[tasks.index(t)]]),
            predict,
            state.params,
            data.task_arrays("test", t),
            batch_size=4,
        )
        assert set(result) == {t} and 0 <= result[t]["accuracy"] <= 1
