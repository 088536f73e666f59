"""Local-directory loaders on tiny fake copies of each dataset's layout (nothing downloaded)."""

import os

import numpy as np
import pytest
from fixtures.datasets import (
    OFFICE_CLASSES,
    write_celeba,
    write_cityscapes,
    write_nyuv2,
    write_office,
)

from mtljax.data import (
    MultiInputIterator,
    load_celeba,
    load_cityscapes,
    load_nyuv2,
    load_office,
)


@pytest.fixture
def nyu_root(tmp_path):
    root = str(tmp_path / "nyuv2")
    written = write_nyuv2(root, n_train=3, n_test=2, size=(16, 24))
    return root, written["train"], written["val"]


def test_nyuv2_reads_the_mtan_layout(nyu_root):
    root, train, val = nyu_root
    data = load_nyuv2(root, val_fraction=0)
    assert data.tasks.names == ("segmentation", "depth", "normal")
    assert data.input_shape == (16, 24, 3) and data.num_classes == {"segmentation": 13}
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
    # By default every file must share the first image's size; size= fixes it.
    with pytest.raises(ValueError, match=r"image/0\.npy has shape \(16, 24, 3\), expected \(288"):
        load_nyuv2(root, size=(288, 384))
    np.save(os.path.join(root, "train", "image", "2.npy"), np.zeros((8, 12, 3), np.float32))
    with pytest.raises(ValueError, match=r"image/2\.npy has shape \(8, 12, 3\)"):
        load_nyuv2(root)
    np.save(os.path.join(root, "train", "image", "2.npy"), np.zeros((16, 24, 3), np.float32))
    np.save(os.path.join(root, "train", "depth", "1.npy"), np.zeros((8, 12, 1), np.float32))
    with pytest.raises(ValueError, match=r"depth/1\.npy has shape \(8, 12, 1\), expected \(16"):
        load_nyuv2(root)
    np.save(os.path.join(root, "train", "depth", "1.npy"), np.zeros((16, 24, 1), np.float32))
    np.save(os.path.join(root, "val", "image", "0.npy"), np.zeros((8, 12, 3), np.float32))
    with pytest.raises(ValueError, match=r"val/image/0\.npy has shape \(8, 12, 3\), expected"):
        load_nyuv2(root)  # test scenes must have the training scenes' size
    np.save(os.path.join(root, "val", "image", "0.npy"), np.zeros((16, 24, 3), np.float32))
    np.save(os.path.join(root, "train", "label", "0.npy"), np.full((16, 24), 13.0))
    with pytest.raises(ValueError, match=r"label/0\.npy holds values outside -1\.\.12"):
        load_nyuv2(root)
    os.remove(os.path.join(root, "train", "image", "1.npy"))
    with pytest.raises(FileNotFoundError, match=r"train/image/1\.npy"):
        load_nyuv2(root)


def test_cityscapes_reads_label_7_and_other_label_folders(tmp_path):
    root = str(tmp_path / "cityscapes")
    written = write_cityscapes(root, n_train=2, n_test=2)
    train, val = written["train"], written["val"]
    data = load_cityscapes(root, val_fraction=0, size=(16, 32))
    assert data.tasks.names == ("segmentation", "depth")
    assert data.input_shape == (16, 32, 3)
    np.testing.assert_array_equal(data.splits["train"]["x"], train["image"])
    np.testing.assert_array_equal(data.splits["test"]["depth"], val["depth"])
    with pytest.raises(FileNotFoundError, match="train/label_19"):
        load_cityscapes(root, label_dir="label_19", num_classes=19)
    for folder in ("train", "val"):
        os.rename(os.path.join(root, folder, "label_7"), os.path.join(root, folder, "label"))
    libmtl = load_cityscapes(root, label_dir="label", val_fraction=0)
    np.testing.assert_array_equal(
        libmtl.splits["train"]["segmentation"], train["label_7"].astype(np.int32)
    )
    with pytest.raises(ValueError, match="expected \\(16, 32, 1\\)"):
        np.save(os.path.join(root, "val", "depth", "0.npy"), np.zeros((16, 32)))
        load_cityscapes(root, label_dir="label")


# ---------------------------------------------------------------- image datasets (Pillow)


def test_celeba_reads_the_official_files(tmp_path):
    pytest.importorskip("PIL")
    root = str(tmp_path / "celeba")
    names, values, partition = write_celeba(root)
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
    write_celeba(root)
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


def test_office_folder_layout_splits_each_domain(tmp_path):
    pytest.importorskip("PIL")
    root = str(tmp_path / "office31")
    domains = ("amazon", "dslr", "webcam")
    write_office(root, domains, images_level=("amazon", "dslr"), ext=".png")
    data = load_office(root, "office-31", image_size=(6, 6), seed=0)
    assert data.tasks.names == domains and data.num_classes == dict.fromkeys(domains, 3)
    for d in domains:
        sizes = {s: len(data.splits[s][d]["y"]) for s in ("train", "val", "test")}
        assert sizes == {"train": 9, "val": 3, "test": 3}  # 5 per class: 3 / 1 / 1
        paths = np.concatenate([data.source_ids[s][d] for s in ("train", "val", "test")])
        assert len(set(paths)) == 15  # disjoint splits
        for s in ("train", "val", "test"):
            x, y = data.splits[s][d]["x"], data.splits[s][d]["y"]
            want = np.array([OFFICE_CLASSES[sorted(OFFICE_CLASSES)[k]] for k in y]) / 255
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
    write_office(root, domains, per_class=2, ext=".png")
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
    write_office(root, ("amazon", "dslr"), per_class=1)
    with pytest.raises(FileNotFoundError, match="missing directory .*webcam"):
        load_office(root)
    write_office(root, ("webcam",), per_class=1)
    os.rename(os.path.join(root, "webcam", "mug"), os.path.join(root, "webcam", "cup"))
    with pytest.raises(ValueError, match="webcam has different classes .*missing \\['mug'\\]"):
        load_office(root)
    with pytest.raises(ValueError, match="Unknown Office dataset"):
        load_office(root, "office-100")
