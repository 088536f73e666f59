"""The auxiliary-task benchmark: the AuxDigits dataset is as documented (tasks, labels, roles,
no leakage) and experiments/auxiliary.py runs end to end and tabulates paired deltas."""

import os

import numpy as np
import pytest

from experiments import auxiliary
from mtljax import configs
from mtljax.data import load_dataset, load_multidigits
from mtljax.data.auxdigits import TASK_NAMES, load_auxdigits, shuffled_labels

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def data():
    return load_auxdigits(seed=3)


@pytest.fixture(scope="module")
def digits():
    """The MultiDigits dataset AuxDigits is built on (same seed)."""
    return load_multidigits(seed=3)


def test_tasks_shapes_and_splits(data, digits):
    assert data.tasks.names == TASK_NAMES == ("digit", "coarse", "right", "shuffled")
    assert [t.output_dim for t in data.tasks] == [10, 5, 10, 10]
    assert data.input_shape == (12, 12, 1) and tuple(data.splits) == SPLITS
    for split in SPLITS:
        arrays = data.splits[split]
        n = len(digits.splits[split]["x"])
        assert set(arrays) == {"x", *TASK_NAMES}
        assert arrays["x"].shape == (n, 12, 12, 1)
        np.testing.assert_array_equal(arrays["x"], digits.splits[split]["x"])
        for task in TASK_NAMES:
            assert arrays[task].shape == (n,) and arrays[task].dtype == np.int32
    assert load_dataset("auxdigits", seed=3).tasks.names == TASK_NAMES


def test_primary_is_data_starved_by_whole_images(data, digits):
    """In training, exactly ``labels_per_class`` left images per class keep the primary label
    (on all their samples); val and test are fully labelled with the left digit."""
    train, left = data.splits["train"]["digit"], digits.splits["train"]["left"]
    ids = digits.source_ids["train"]["left_id"]
    present = train >= 0
    np.testing.assert_array_equal(train[present], left[present])
    assert set(np.unique(train[~present])) == {-1}
    labelled = np.unique(ids[present])
    assert not np.isin(ids[~present], labelled).any()  # an image is labelled on all samples
    image_class = {i: c for i, c in zip(ids, left, strict=True)}
    assert np.bincount([image_class[i] for i in labelled], minlength=10).tolist() == [10] * 10
    for split in ("val", "test"):
        np.testing.assert_array_equal(data.splits[split]["digit"], digits.splits[split]["left"])
    fewer = load_auxdigits(seed=3, labels_per_class=2, pairs_per_image=1)
    assert int((fewer.splits["train"]["digit"] >= 0).sum()) == 20


def test_helpful_and_competing_tasks_are_as_specified(data, digits):
    for split in SPLITS:
        left, right = digits.splits[split]["left"], digits.splits[split]["right"]
        np.testing.assert_array_equal(data.splits[split]["coarse"], left % 5)
        np.testing.assert_array_equal(data.splits[split]["right"], right)
    parity = load_auxdigits(seed=3, coarse_classes=2, pairs_per_image=1)
    assert parity.tasks[1].output_dim == 2
    assert set(np.unique(parity.splits["test"]["coarse"])) == {0, 1}


def test_shuffled_task_is_uncorrelated_with_the_digit(data, digits):
    """Fully shuffled: per image, a permutation of the split's labels, independent of the
    digit (agreement near Σ p_c² ≈ 0.1, and no digit predicts it better than chance)."""
    for split in SPLITS:
        ids = digits.source_ids[split]["left_id"]
        left, noise = digits.splits[split]["left"], data.splits[split]["shuffled"]
        _, first = np.unique(ids, return_index=True)
        assert all(len(np.unique(noise[ids == i])) == 1 for i in ids[first[:50]])
        assert sorted(noise[first].tolist()) == sorted(left[first].tolist())  # same counts
        table = np.zeros((10, 10))
        np.add.at(table, (left[first], noise[first]), 1)
        best_guess = table.max(axis=1).sum() / table.sum()  # majority label per digit
        assert np.trace(table) / table.sum() < 0.2 and best_guess < 0.3, split
    kept = load_auxdigits(seed=3, shuffle_fraction=0.0, pairs_per_image=1)
    np.testing.assert_array_equal(kept.splits["val"]["shuffled"], kept.splits["val"]["digit"])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 1000)
    half = shuffled_labels(labels, 0.5, rng)
    assert 0.45 < np.mean(half == labels) < 0.65
    assert np.bincount(half).tolist() == np.bincount(labels).tolist()


def test_no_leakage_across_splits(data):
    for key in ("left_id", "right_id"):
        pools = [set(data.source_ids[split][key].tolist()) for split in SPLITS]
        assert not (pools[0] & pools[1] or pools[0] & pools[2] or pools[1] & pools[2])


def test_bad_options_raise():
    for options in ({"labels_per_class": 0}, {"coarse_classes": 11}, {"shuffle_fraction": 1.5}):
        with pytest.raises(ValueError, match=next(iter(options))):
            load_auxdigits(**options)


def test_config_declares_the_roles():
    config = configs.load("auxdigits:pcd")
    assert config.method.name == "pcd" and config.data.name == "auxdigits"
    assert config.data.tasks == ("digit", "coarse", "right") and config.data.primary == ("digit",)


def summary(seed, digit, coarse=None):
    test = {"digit": {"accuracy": digit}}
    if coarse is not None:
        test["coarse"] = {"accuracy": coarse}
    return {"config": {"seed": seed}, "test": test, "wall_time_s": 1.0}


def test_table_pairs_each_run_with_the_single_task_run_of_its_seed():
    groups = {
        "stl_digit": [summary(0, 0.80), summary(1, 0.90)],
        "ew": [summary(0, 0.83, 0.9), summary(1, 0.88, 0.8)],
        "pcd": [summary(1, 0.95)],
        "gradsim": [],
    }
    rows = {row[0]: row for row in auxiliary.table_rows(groups, "right")}
    assert rows["stl_digit"][1:4] == ("2", "0.8500 ± 0.0707", "—")
    assert rows["ew"][2:6] == ("0.8550 ± 0.0354", "+0.50 ± 3.54", "0.8500 ± 0.0707", "—")
    assert rows["pcd"][3] == "+5.00"  # paired with the seed-1 baseline only
    assert rows["gradsim"][1:4] == ("0", "—", "—")
    table = auxiliary.markdown(list(rows.values()), "right")
    assert (
        table.splitlines()[0].startswith("| group | seeds | digit acc") and "| pcd | 1 |" in table
    )


def test_quick_run_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "aux")
    code = auxiliary.main(["--quick", "--seeds", "1", "--methods", "ew,no_such", "--out", out])
    printed = capsys.readouterr().out
    assert code == 1 and "not registered, left out: no_such" in printed  # reported, not faked
    report = open(os.path.join(out, "auxiliary.md"), encoding="utf-8").read()
    assert "- versions: python" in report and "--quick" in report
    rows = [line.split(" | ")[0].lstrip("| ") for line in report.splitlines() if "| 1 |" in line]
    assert rows == ["stl_digit", "ew", "without_right/ew"]
    assert os.path.isfile(os.path.join(out, "without_right", "ew", "seed0", "summary.json"))
