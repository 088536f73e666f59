"""Local-directory loaders on tiny fake copies of each dataset's layout (nothing downloaded)."""

import os

import numpy as np
import pytest

from mtljax.data import (
    MultiInputIterator,
    load_celeba,
    load_cityscapes,
    load_nyuv2,
    load_office,
)


def _write_scenes(root, folder, n, size, dirs, num_classes, seed):
    """MTAN-style ``root/folder/<dir>/<i>.npy``; returns what was written."""
    rng = np.random.default_rng(seed)
    h, w = size
    made = {"image": rng.random((n, h, w, 3)).astype(np.float32)}
    made["label"] = rng.integers(-1, num_classes, (n, h, w)).astype(np.float32)
    made["depth"] = rng.random((n, h, w, 1)).astype(np.float32)
    made["normal"] = rng.normal(size=(n, h, w, 3)).astype(np.float32)
    for key, subdir in dirs.items():
        os.makedirs(os.path.join(root, folder, subdir))
        for i in range(n):
            np.save(os.path.join(root, folder, subdir, f"{i}.npy"), made[key][i])
    return made


NYU_DIRS = {"image": "image", "label": "label", "depth": "depth", "normal": "normal"}
CITY_DIRS = {"image": "image", "label": "label_7", "depth": "depth"}


@pytest.fixture
def nyu_root(tmp_path):
    root = str(tmp_path / "nyuv2")
    train = _write_scenes(root, "train", 3, (288, 384), NYU_DIRS, 13, 0)
    val = _write_scenes(root, "val", 2, (288, 384), NYU_DIRS, 13, 1)
    return root, train, val


def test_nyuv2_reads_the_mtan_layout(nyu_root):
    root, train, val = nyu_root
    data = load_nyuv2(root, val_fraction=0)
    assert data.tasks.names == ("segmentation", "depth", "normal")
    assert data.input_shape == (288, 384, 3) and data.num_classes == {"segmentation": 13}
    got = data.splits["train"]
    np.testing.assert_array_equal(got["x"], train["image"])
    assert got["segmentation"].dtype == np.int32 and got["segmentation"].min() == -1
    np.testing.assert_array_equal(got["segmentation"], train["label"].astype(np.int32))
    np.testing.assert_array_equal(got["depth"], train["depth"])
    np.testing.assert_array_equal(data.splits["test"]["normal"], val["normal"])
    # val_fraction=0 validates on the test scenes (the MTAN / LibMTL protocol) ...
    assert data.splits["val"] is data.splits["test"]
    # ... val_fraction>0 holds out training scenes instead, deterministically.
    held = load_nyuv2(root, val_fraction=0.34, seed=1)
    ids = held.source_ids
    assert len(ids["val"]["file_index"]) == 1 and len(ids["train"]["file_index"]) == 2
    assert not set(ids["val"]["file_index"]) & set(ids["train"]["file_index"])
    for split in ("train", "val"):
        np.testing.assert_array_equal(
            held.splits[split]["x"], train["image"][ids[split]["file_index"]]
        )
    again = load_nyuv2(root, val_fraction=0.34, seed=1).source_ids
    assert np.array_equal(again["val"]["file_index"], ids["val"]["file_index"])
    # The default holds out training scenes too: model selection never sees the test split.
    default = load_nyuv2(root)
    assert default.splits["val"] is not default.splits["test"]
    assert len(default.source_ids["val"]["file_index"]) >= 1


def test_nyuv2_layout_errors_name_the_culprit(nyu_root):
    root, _, _ = nyu_root
    os.remove(os.path.join(root, "train", "depth", "1.npy"))
    with pytest.raises(FileNotFoundError, match=r"train/depth/1\.npy"):
        load_nyuv2(root)
    os.rename(os.path.join(root, "val", "normal"), os.path.join(root, "val", "normals"))
    with pytest.raises(FileNotFoundError, match=r"val/normal"):
        load_nyuv2(root, limit=1)
    with pytest.raises(FileNotFoundError, match="missing directory .*nowhere"):
        load_nyuv2(os.path.join(root, "nowhere"))


def test_nyuv2_rejects_bad_files(nyu_root):
    root, _, _ = nyu_root
    np.save(os.path.join(root, "train", "image", "2.npy"), np.zeros((144, 192, 3), np.float32))
    with pytest.raises(ValueError, match=r"image/2\.npy has shape \(144, 192, 3\)"):
        load_nyuv2(root)
    np.save(os.path.join(root, "train", "image", "2.npy"), np.zeros((288, 384, 3), np.float32))
    np.save(os.path.join(root, "train", "label", "0.npy"), np.full((288, 384), 13.0))
    with pytest.raises(ValueError, match=r"label/0\.npy holds values outside -1\.\.12"):
        load_nyuv2(root)
    os.remove(os.path.join(root, "train", "image", "1.npy"))
    with pytest.raises(FileNotFoundError, match=r"train/image/1\.npy"):
        load_nyuv2(root)


def test_cityscapes_reads_label_7_and_other_label_folders(tmp_path):
    root = str(tmp_path / "cityscapes")
    train = _write_scenes(root, "train", 2, (128, 256), CITY_DIRS, 7, 2)
    val = _write_scenes(root, "val", 2, (128, 256), CITY_DIRS, 7, 3)
    data = load_cityscapes(root, val_fraction=0)
    assert data.tasks.names == ("segmentation", "depth")
    assert data.input_shape == (128, 256, 3)
    np.testing.assert_array_equal(data.splits["train"]["x"], train["image"])
    np.testing.assert_array_equal(data.splits["test"]["depth"], val["depth"])
    with pytest.raises(FileNotFoundError, match="train/label_19"):
        load_cityscapes(root, label_dir="label_19", num_classes=19)
    for folder in ("train", "val"):
        os.rename(os.path.join(root, folder, "label_7"), os.path.join(root, folder, "label"))
    libmtl = load_cityscapes(root, label_dir="label", val_fraction=0)
    np.testing.assert_array_equal(
        libmtl.splits["train"]["segmentation"], train["label"].astype(np.int32)
    )
    with pytest.raises(ValueError, match="expected \\(128, 256, 1\\)"):
        np.save(os.path.join(root, "val", "depth", "0.npy"), np.zeros((128, 256)))
        load_cityscapes(root, label_dir="label")


# ---------------------------------------------------------------- image datasets (Pillow)


def _save_image(path, color, size=(10, 12)):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (size[1], size[0]), tuple(int(c) for c in color)).save(path)


def _write_celeba(root, n=9):
    rng = np.random.default_rng(0)
    names = [f"Attr_{k}" for k in range(40)]
    values = rng.choice([-1, 1], size=(n, 40))
    files = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, f in enumerate(files):
        _save_image(os.path.join(root, "img_align_celeba", f), (20 * i, 100, 200))
    with open(os.path.join(root, "list_attr_celeba.txt"), "w") as out:
        out.write(f"{n}\n{' '.join(names)}\n")
        for f, row in zip(files, values, strict=True):
            out.write(f + " " + " ".join(f"{v:2d}" for v in row) + "\n")
    partition = [0, 0, 0, 0, 1, 1, 2, 2, 2][:n]
    with open(os.path.join(root, "list_eval_partition.txt"), "w") as out:
        out.writelines(f"{f} {p}\n" for f, p in zip(files, partition, strict=True))
    return names, values, partition


def test_celeba_reads_the_official_files(tmp_path):
    pytest.importorskip("PIL")
    root = str(tmp_path / "celeba")
    names, values, partition = _write_celeba(root)
    data = load_celeba(root, image_size=(8, 6))
    assert data.tasks.names == tuple(names) and len(data.tasks) == 40
    assert {s: len(data.splits[s]["x"]) for s in ("train", "val", "test")} == {
        "train": 4,
        "val": 2,
        "test": 3,
    }
    assert data.input_shape == (8, 6, 3) and data.splits["train"]["x"].dtype == np.float32
    test_rows = np.flatnonzero(np.array(partition) == 2)
    np.testing.assert_array_equal(data.splits["test"]["Attr_5"], (values[test_rows, 5] + 1) // 2)
    assert data.source_ids["val"]["file"].tolist() == ["000005.jpg", "000006.jpg"]
    # JPEG keeps a flat colour within a few levels.
    np.testing.assert_allclose(
        data.splits["val"]["x"][1],
        np.broadcast_to([100 / 255, 100 / 255, 200 / 255], (8, 6, 3)),
        atol=4 / 255,
    )
    subset = load_celeba(
        root, attributes=["Attr_3", "Attr_0"], image_size=(4, 4), limit=1, dtype=np.uint8
    )
    assert subset.tasks.names == ("Attr_3", "Attr_0")
    assert subset.splits["train"]["x"].shape == (1, 4, 4, 3)
    assert subset.splits["train"]["x"].dtype == np.uint8


def test_celeba_layout_errors(tmp_path):
    pytest.importorskip("PIL")
    root = str(tmp_path / "celeba")
    _write_celeba(root)
    with pytest.raises(ValueError, match="Unknown CelebA attributes \\['Smiling'\\]"):
        load_celeba(root, attributes=["Smiling"])
    os.remove(os.path.join(root, "img_align_celeba", "000007.jpg"))
    with pytest.raises(FileNotFoundError, match="000007.jpg"):
        load_celeba(root)
    partition = os.path.join(root, "list_eval_partition.txt")
    os.rename(partition, partition + ".bak")
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
        load_celeba(root)
    os.rename(partition + ".bak", partition)
    with open(os.path.join(root, "list_attr_celeba.txt"), "a") as out:
        out.write("000010.jpg 1 -1\n")
    with pytest.raises(ValueError, match="list_attr_celeba.txt: line 1 announces 9"):
        load_celeba(root)


COLORS = {"back_pack": (255, 0, 0), "bike": (0, 255, 0), "mug": (0, 0, 255)}


def _write_office_folders(root, domains, per_class=5, images_level=()):
    for d in domains:
        base = os.path.join(root, d, "images") if d in images_level else os.path.join(root, d)
        for c, color in COLORS.items():
            for i in range(per_class):
                _save_image(os.path.join(base, c, f"frame_{i:04d}.png"), color)


def test_office_folder_layout_splits_each_domain(tmp_path):
    pytest.importorskip("PIL")
    root = str(tmp_path / "office31")
    domains = ("amazon", "dslr", "webcam")
    _write_office_folders(root, domains, images_level=("amazon", "dslr"))
    data = load_office(root, "office-31", image_size=(6, 6), seed=0)
    assert data.tasks.names == domains and data.num_classes == dict.fromkeys(domains, 3)
    for d in domains:
        sizes = {s: len(data.splits[s][d]["y"]) for s in ("train", "val", "test")}
        assert sizes == {"train": 9, "val": 3, "test": 3}  # 5 per class: 3 / 1 / 1
        paths = np.concatenate([data.source_ids[s][d] for s in ("train", "val", "test")])
        assert len(set(paths)) == 15  # disjoint splits
        for s in ("train", "val", "test"):
            x, y = data.splits[s][d]["x"], data.splits[s][d]["y"]
            want = np.array([COLORS[sorted(COLORS)[k]] for k in y]) / 255
            np.testing.assert_allclose(x[:, 2, 3], want, atol=1e-6)  # label = sorted class
    again = load_office(root, "office-31", image_size=(6, 6), seed=0)
    other = load_office(root, "office-31", image_size=(6, 6), seed=1)
    assert np.array_equal(again.source_ids["test"]["dslr"], data.source_ids["test"]["dslr"])
    assert not all(
        np.array_equal(other.source_ids["test"][d], data.source_ids["test"][d]) for d in domains
    )
    batch = next(MultiInputIterator(data.splits["train"], 4, seed=0))
    assert {d: b["x"].shape for d, b in batch.items()} == dict.fromkeys(domains, (4, 6, 6, 3))


def test_office_image_lists(tmp_path):
    pytest.importorskip("PIL")
    root = str(tmp_path / "officehome")
    domains = ("Art", "Clipart", "Product", "Real_World")
    _write_office_folders(root, domains, per_class=2)
    lists = os.path.join(root, "data_txt")
    os.makedirs(lists)
    for d in domains:
        for split, i in (("train", 0), ("val", 1), ("test", 1)):
            with open(os.path.join(lists, f"{d}_{split}.txt"), "w") as out:
                out.write(f"{d}/mug/frame_{i:04d}.png 64\n{d}/bike/frame_{i:04d}.png 1\n")
    data = load_office(root, "office-home", list_dir=lists, image_size=(5, 5))
    assert data.tasks.names == domains and data.num_classes["Art"] == 65
    assert data.splits["val"]["Product"]["y"].tolist() == [64, 1]
    np.testing.assert_allclose(data.splits["train"]["Clipart"]["x"][0, 0, 0], [0, 0, 1])
    os.remove(os.path.join(lists, "Clipart_val.txt"))
    with pytest.raises(FileNotFoundError, match="Clipart_val.txt"):
        load_office(root, "office-home", list_dir=lists, image_size=(5, 5))


def test_office_layout_errors(tmp_path):
    pytest.importorskip("PIL")
    root = str(tmp_path / "office31")
    _write_office_folders(root, ("amazon", "dslr"), per_class=1)
    with pytest.raises(FileNotFoundError, match="missing directory .*webcam"):
        load_office(root)
    _write_office_folders(root, ("webcam",), per_class=1)
    os.rename(os.path.join(root, "webcam", "mug"), os.path.join(root, "webcam", "cup"))
    with pytest.raises(ValueError, match="webcam has different classes .*missing \\['mug'\\]"):
        load_office(root)
    with pytest.raises(ValueError, match="Unknown Office dataset"):
        load_office(root, "office-100")
