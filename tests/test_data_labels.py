"""Class labels through the data layer: which datasets have them, what their items and the data
module's batches look like, and that the samples themselves are as before labels existed.

Uses the offline MNIST test split and tiny synthetic stand-ins (from tests/test_data.py) for
CIFAR-10, Fashion-MNIST, CelebA and image folders; nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from sklearn.datasets import load_digits, make_moons
from test_data import (
    CONF_DIR,
    SHARED_DATA,
    _fake_celeba,
    _fake_mnist_like,
    _write_cifar_batch,
    assert_plain_one_line,
)
from torchvision.datasets.mnist import read_label_file

from diffcli.components import ADVISORY_KEYS, build
from diffcli.data.datamodule import DiffusionDataModule, TensorDataModule
from diffcli.data.labels import LabelledDataset
from diffcli.data.registry import (
    DATASETS,
    LABELLED_DATASETS,
    build_dataset,
    dataset_has_labels,
    make_datamodule,
)
from diffcli.data.sources import CIFAR10_CLASSES, FASHION_MNIST_CLASSES
from diffcli.data.vision import TensorSamples, UInt8Images
from diffcli.errors import DatasetNotFoundError, DiffcliError

DIGIT_NAMES = tuple(str(k) for k in range(10))
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot")
CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")
MNIST_TEST_FIRST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known start of t10k


def _labels_of(dataset: LabelledDataset) -> list[int]:
    """Every label, read item by item (checking each is a 0-dim int64 tensor)."""
    labels = []
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
        assert isinstance(y, torch.Tensor) and y.shape == () and y.dtype == torch.int64
        labels.append(int(y))
    return labels


def _assert_labelled(dataset: object, names: tuple[str, ...]) -> None:
    assert isinstance(dataset, LabelledDataset)
    assert dataset.num_classes == len(names) and dataset.class_names == names


# --- which datasets have labels ----------------------------------------------------------------


def test_labelled_dataset_names() -> None:
    assert set(LABELLED_DATASETS) == {"digits", "mnist", "fashion_mnist", "cifar10", "moons",
                                      "gaussian_mixture"}
    for name in DATASETS:
        expected = {"celeba": False, "imagefolder": None}.get(name, name in LABELLED_DATASETS)
        assert dataset_has_labels(name) is expected, name
    assert dataset_has_labels("celeba", attribute="Smiling") is True
    with pytest.raises(DiffcliError, match="unknown dataset"):
        dataset_has_labels("cifar100")


# --- digits, MNIST, Fashion-MNIST, CIFAR-10 -----------------------------------------------------


def test_digits_labels() -> None:
    dataset = build_dataset("digits", labels=True)
    _assert_labelled(dataset, DIGIT_NAMES)
    assert _labels_of(dataset)[:20] == load_digits().target[:20].tolist()
    assert torch.equal(dataset.labels, torch.from_numpy(load_digits().target).long())
    bare = build_dataset("digits")
    assert isinstance(bare, TensorSamples) and isinstance(bare[0], torch.Tensor)
    assert torch.equal(dataset[5][0], bare[5])


def test_mnist_labels_from_shared_folder() -> None:
    raw = SHARED_DATA / "MNIST" / "raw"
    if not raw.is_dir():
        pytest.skip(f"offline data folder {SHARED_DATA} is absent")
    dataset = build_dataset("mnist", root=SHARED_DATA, split="test", labels=True)
    _assert_labelled(dataset, DIGIT_NAMES)
    assert len(dataset) == 10000 and dataset.labels.dtype == torch.int64
    assert dataset.labels[:10].tolist() == MNIST_TEST_FIRST_LABELS
    assert torch.equal(dataset.labels, read_label_file(str(raw / "t10k-labels-idx1-ubyte")))
    assert torch.bincount(dataset.labels).tolist()[:2] == [980, 1135]  # zeros, ones in t10k
    bare = build_dataset("mnist", root=SHARED_DATA, split="test")
    assert isinstance(bare, UInt8Images) and torch.equal(bare[3], dataset[3][0])


@pytest.mark.parametrize("split, size", [("train", 12), ("test", 5)])  # train is .gz, test not
def test_fashion_mnist_labels(tmp_path: Path, split: str, size: int) -> None:
    _fake_mnist_like(tmp_path, "FashionMNIST", {"train": 12, "test": 5})
    dataset = build_dataset("fashion_mnist", root=tmp_path, split=split, labels=True)
    _assert_labelled(dataset, FASHION_NAMES)
    assert FASHION_MNIST_CLASSES == FASHION_NAMES
    assert _labels_of(dataset) == [i % 10 for i in range(size)]


def test_idx_labels_out_of_range_are_one_line(tmp_path: Path) -> None:
    _fake_mnist_like(tmp_path, "MNIST", {"test": 3})
    raw = tmp_path / "MNIST" / "raw"
    label_file = raw / "t10k-labels-idx1-ubyte"
    label_file.write_bytes(label_file.read_bytes()[:-1] + bytes([12]))
    with pytest.raises(DiffcliError) as info:
        build_dataset("mnist", root=tmp_path, split="test", labels=True)
    message = str(info.value)
    assert_plain_one_line(message)
    assert str(raw) in message and "outside 0..9" in message and "set download to true" in message


@pytest.fixture()
def cifar_root(tmp_path: Path) -> Path:
    """train: 5 batches of 4 (labels 0..3 each); test: 7 images (labels 0..6)."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}", 4, seed=i)
    _write_cifar_batch(folder / "test_batch", 7, seed=9)
    return tmp_path


def test_cifar10_labels(cifar_root: Path) -> None:
    test = build_dataset("cifar10", root=cifar_root, split="test", labels=True)
    _assert_labelled(test, CIFAR_NAMES)
    assert CIFAR10_CLASSES == CIFAR_NAMES
    assert _labels_of(test) == list(range(7))
    train = build_dataset("cifar10", root=cifar_root, split="train", labels=True, image_size=16)
    assert _labels_of(train) == [0, 1, 2, 3] * 5 and train[0][0].shape == (3, 16, 16)
    bare = build_dataset("cifar10", root=cifar_root, split="test")
    assert isinstance(bare, UInt8Images) and isinstance(bare[0], torch.Tensor)


def test_cifar10_bad_label_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.zeros((2, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [3, 10]}))
    with pytest.raises(DiffcliError) as info:
        build_dataset("cifar10", root=tmp_path, split="test", labels=True)
    message = str(info.value)
    assert_plain_one_line(message)
    assert str(folder) in message and "outside 0..9" in message and "e.g. 10" in message


# --- image folders ---------------------------------------------------------------------------


def _save(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (value, value, value)).save(path)


@pytest.fixture()
def classes_root(tmp_path: Path) -> Path:
    """root/{dog,cat,bird}/... (cat also nested deeper); a hidden folder and a text file."""
    root = tmp_path / "animals"
    _save(root / "dog" / "d1.png", 10)
    _save(root / "dog" / "d2.png", 20)
    _save(root / "cat" / "c1.png", 30)
    _save(root / "cat" / "indoor" / "c2.jpg", 40)
    _save(root / "bird" / "b1.png", 50)
    _save(root / ".hidden" / "h.png", 60)
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_subfolders_are_classes(classes_root: Path) -> None:
    dataset = build_dataset("imagefolder", root=classes_root, image_size=8, labels=True)
    _assert_labelled(dataset, ("bird", "cat", "dog"))
    parents = [p.relative_to(classes_root).parts[0] for p in dataset.dataset.paths]
    assert _labels_of(dataset) == [("bird", "cat", "dog").index(p) for p in parents]
    assert sorted(_labels_of(dataset)) == [0, 1, 1, 2, 2]
    assert dataset_has_labels("imagefolder", classes_root) is True
    cached = build_dataset("imagefolder", root=classes_root, image_size=8, cache=True,
                           labels=True)
    assert isinstance(cached.dataset, UInt8Images)
    assert all(torch.equal(cached[i][0], dataset[i][0]) for i in range(len(dataset)))
    assert torch.equal(cached.labels, dataset.labels)
    bare = build_dataset("imagefolder", root=classes_root, image_size=8)
    assert isinstance(bare[0], torch.Tensor) and len(bare) == 5


def test_imagefolder_symlink_loop_with_classes(classes_root: Path) -> None:
    os.symlink(classes_root, classes_root / "dog" / "loop")
    dataset = build_dataset("imagefolder", root=classes_root, image_size=8, labels=True)
    assert len(dataset) == 5 and dataset.class_names == ("bird", "cat", "dog")


@pytest.mark.parametrize("layout", ["image_in_root", "one_subfolder"])
def test_imagefolder_unlabelled(tmp_path: Path, layout: str) -> None:
    _save(tmp_path / "a" / "x.png", 10)
    _save(tmp_path / ("top.png" if layout == "image_in_root" else "a/y.png"), 20)
    if layout == "image_in_root":
        _save(tmp_path / "b" / "z.png", 30)
    dataset = build_dataset("imagefolder", root=tmp_path, image_size=8, labels=True)
    assert not isinstance(dataset, LabelledDataset) and isinstance(dataset[0], torch.Tensor)
    assert dataset_has_labels("imagefolder", tmp_path) is False
    dm = make_datamodule("imagefolder", root=tmp_path, image_size=8, batch_size=2)
    assert dm.num_classes is None and dm.class_names is None
    assert isinstance(next(iter(dm.train_dataloader())), torch.Tensor)


def test_imagefolder_labels_unknown_without_root(tmp_path: Path) -> None:
    assert dataset_has_labels("imagefolder") is None
    assert dataset_has_labels("imagefolder", tmp_path / "missing") is None


# --- CelebA attributes ------------------------------------------------------------------------

ATTRIBUTES = ("Male", "Smiling", "Young")
SMILING = [1, -1, 1, -1, -1, 1]  # images 000001..000006 (train: 1-3, valid: 4, test: 5-6)


def _write_attributes(folder: Path, csv: bool = False) -> None:
    """list_attr_celeba.txt (count line, names line, rows) or Kaggle's .csv for 6 images."""
    rows = [[(-1) ** i, s, 1] for i, s in enumerate(SMILING)]
    if csv:
        lines = ["image_id," + ",".join(ATTRIBUTES)]
        lines += [f"{i:06d}.jpg," + ",".join(map(str, r)) for i, r in enumerate(rows, start=1)]
        (folder / "list_attr_celeba.csv").write_text("\n".join(lines) + "\n")
        return
    lines = [str(len(rows)), " ".join(ATTRIBUTES) + " "]
    lines += [f"{i:06d}.jpg " + " ".join(f"{v:2d}" for v in r) for i, r in enumerate(rows, 1)]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture()
def celeba_root(tmp_path: Path) -> Path:
    _fake_celeba(tmp_path / "celeba")
    _write_attributes(tmp_path / "celeba")
    return tmp_path


@pytest.mark.parametrize("split, first", [("train", 0), ("test", 4), ("all", 0)])
def test_celeba_attribute_labels(celeba_root: Path, split: str, first: int) -> None:
    dataset = build_dataset("celeba", root=celeba_root, split=split, image_size=8,
                            attribute="Smiling", labels=True)
    _assert_labelled(dataset, ("not Smiling", "Smiling"))
    expected = [int(v == 1) for v in SMILING][first:first + len(dataset)]
    assert _labels_of(dataset) == expected and dataset[0][0].shape == (3, 8, 8)


def test_celeba_attribute_from_kaggle_csv(tmp_path: Path) -> None:
    _fake_celeba(tmp_path / "celeba")
    _write_attributes(tmp_path / "celeba", csv=True)
    dataset = build_dataset("celeba", root=tmp_path, split="all", image_size=8,
                            attribute="Male", labels=True, cache=True)
    assert dataset.class_names == ("not Male", "Male") and _labels_of(dataset) == [1, 0] * 3


def test_celeba_unlabelled_by_default(celeba_root: Path) -> None:
    dataset = build_dataset("celeba", root=celeba_root, split="all", image_size=8, labels=True)
    assert not isinstance(dataset, LabelledDataset) and isinstance(dataset[0], torch.Tensor)
    bare = build_dataset("celeba", root=celeba_root, split="all", image_size=8,
                         attribute="Smiling")
    assert isinstance(bare[0], torch.Tensor)


def test_celeba_unknown_attribute_is_one_line(celeba_root: Path) -> None:
    with pytest.raises(DiffcliError) as info:
        build_dataset("celeba", root=celeba_root, split="all", attribute="Smilling")
    message = str(info.value)
    assert_plain_one_line(message)
    assert "'Smilling'" in message and "Male, Smiling, Young" in message


def test_celeba_missing_attribute_file(celeba_root: Path) -> None:
    (celeba_root / "celeba" / "list_attr_celeba.txt").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        build_dataset("celeba", root=celeba_root, split="all", attribute="Smiling")
    message = str(info.value)
    assert_plain_one_line(message)
    assert str(celeba_root / "celeba" / "list_attr_celeba.txt") in message
    assert "set attribute to null" in message


def test_attribute_is_for_celeba_only() -> None:
    with pytest.raises(DiffcliError, match="attribute applies to celeba only"):
        build_dataset("digits", attribute="Smiling")


def test_celeba_config_with_attribute(celeba_root: Path) -> None:
    overrides = ["dataset=celeba", f"dataset.root={celeba_root}", "dataset.attribute=Smiling",
                 "dataset.split=all", "dataset.image_size=8", "dataset.num_workers=0",
                 "dataset.batch_size=3"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    dm = build("dataset", {k: v for k, v in cfg.dataset.items()
                           if k not in ADVISORY_KEYS["dataset"]})
    assert dm.num_classes == 2 and dm.class_names == ("not Smiling", "Smiling")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (3, 3, 8, 8) and y.dtype == torch.int64 and set(y.tolist()) <= {0, 1}


# --- 2-D points ----------------------------------------------------------------------------------


def _old_moons(n: int, seed: int) -> torch.Tensor:
    """The moons points as diffcli drew them before labels (sklearn, then a fixed affine map)."""
    xy, _ = make_moons(n, noise=0.05, random_state=seed)
    return torch.from_numpy(((xy - np.array([0.5, 0.25])) * 1.5).astype(np.float32))


def _old_mixture(n: int, seed: int) -> torch.Tensor:
    """The gaussian_mixture points as drawn before labels (8 components, radius 2, std 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    centers = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    which = torch.randint(0, 8, (n,), generator=gen)
    noise = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return ((centers[which] + 0.1 * noise) / math.sqrt(2.0)).to(torch.float32)


@pytest.mark.parametrize("name, old", [("moons", _old_moons), ("gaussian_mixture", _old_mixture)])
@pytest.mark.parametrize("seed", [0, 5])
def test_points_unchanged(name: str, old, seed: int) -> None:
    expected = old(700, seed)
    assert torch.equal(build_dataset(name, n_points=700, seed=seed).data, expected)
    labelled = build_dataset(name, n_points=700, seed=seed, labels=True)
    assert torch.equal(labelled.dataset.data, expected)
    dm = make_datamodule(name, n_points=700, seed=seed)
    assert torch.equal(dm.data, expected)  # .data: the points only, never the labels


def test_moons_labels_follow_the_geometry() -> None:
    dataset = build_dataset("moons", n_points=2000, seed=1, labels=True)
    _assert_labelled(dataset, ("upper", "lower"))
    xy = dataset.dataset.data.double() / 1.5 + torch.tensor([0.5, 0.25], dtype=torch.float64)
    upper, lower = dataset.labels == 0, dataset.labels == 1
    assert 900 < int(upper.sum()) < 1100
    assert (xy[upper, 1] > -0.25).all() and (xy[lower, 1] < 0.75).all()
    assert xy[upper, 1].mean() > 0.5 > xy[lower, 1].mean() + 0.4  # upper ~0.64, lower ~-0.14
    radius_upper = xy[upper].norm(dim=1)
    radius_lower = (xy[lower] - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1)
    assert ((radius_upper - 1).abs() < 0.3).all() and ((radius_lower - 1).abs() < 0.3).all()
    _, sk_labels = make_moons(2000, noise=0.05, random_state=1)
    assert dataset.labels.tolist() == sk_labels.tolist()


def test_mixture_labels_are_the_nearest_component() -> None:
    dataset = build_dataset("gaussian_mixture", n_points=3000, seed=2, labels=True)
    _assert_labelled(dataset, tuple(str(k) for k in range(8)))
    angles = torch.arange(8) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1) / math.sqrt(2.0)  # (8, 2)
    nearest = torch.cdist(dataset.dataset.data, means).argmin(dim=1)
    assert torch.equal(nearest, dataset.labels)
    assert torch.bincount(dataset.labels, minlength=8).min() > 250


def test_swiss_roll_is_unlabelled() -> None:
    dataset = build_dataset("swiss_roll", n_points=50, labels=True)
    assert isinstance(dataset, TensorSamples) and isinstance(dataset[0], torch.Tensor)
    dm = make_datamodule("swiss_roll", n_points=50, batch_size=10)
    assert dm.num_classes is None and dm.class_names is None
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape == (10, 2)


# --- the data module --------------------------------------------------------------------------


def test_datamodule_serves_labelled_batches() -> None:
    dm = make_datamodule("digits", batch_size=16)
    assert dm.num_classes == 10 and dm.class_names == DIGIT_NAMES
    assert dm.kind == "image" and dm.data_shape == (1, 8, 8) and dm.num_samples == 1797
    assert dm.batch_size == 16 and dm.data.shape == (1797, 1, 8, 8)
    targets = torch.from_numpy(load_digits().target)
    rows = {tuple(img.flatten().tolist()): i for i, img in enumerate(dm.data)}
    for x, y in list(dm.train_dataloader())[:5]:
        assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32
        assert y.shape == (16,) and y.dtype == torch.int64
        index = [rows[tuple(img.flatten().tolist())] for img in x]
        assert torch.equal(y, targets[index])  # each label belongs to its image


def test_datamodule_batch_is_a_tuple_for_points() -> None:
    dm = make_datamodule("moons", n_points=64, batch_size=16)
    assert dm.num_classes == 2 and dm.class_names == ("upper", "lower")
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(isinstance(b, tuple) and len(b) == 2 for b in batches)
    assert all(x.shape == (16, 2) and y.shape == (16,) for x, y in batches)


def test_flips_keep_labels(cifar_root: Path) -> None:
    dm = make_datamodule("cifar10", root=cifar_root, batch_size=5)
    assert dm.random_flip and dm.num_classes == 10 and dm.class_names == CIFAR_NAMES
    plain = build_dataset("cifar10", root=cifar_root, split="train", labels=True)
    originals = torch.stack([plain[i][0] for i in range(len(plain))]).flatten(1)
    mirrored_originals = torch.stack([plain[i][0].flip(-1) for i in range(len(plain))]).flatten(1)
    L.seed_everything(0, verbose=False)
    mirrored = 0
    for x, y in dm.train_dataloader():
        for img, label in zip(x.flatten(1), y, strict=True):
            same = (originals == img).all(1).nonzero().flatten().tolist()
            flipped = (mirrored_originals == img).all(1).nonzero().flatten().tolist()
            (index,) = same or flipped
            mirrored += not same
            assert int(label) == int(plain.labels[index])
    assert 0 < mirrored < 20


def test_build_dataset_flip_with_labels(cifar_root: Path) -> None:
    flipping = build_dataset("cifar10", root=cifar_root, split="test", random_flip=True,
                             labels=True)
    assert flipping.num_classes == 10 and flipping.class_names == CIFAR_NAMES
    plain = build_dataset("cifar10", root=cifar_root, split="test")
    L.seed_everything(1, verbose=False)
    items = [flipping[i] for i in range(7) for _ in range(3)]
    assert all(int(y) == i // 3 for i, (_, y) in enumerate(items))
    assert any(torch.equal(x, plain[i // 3].flip(-1)) for i, (x, _) in enumerate(items))
    assert all(torch.equal(x, plain[i // 3]) or torch.equal(x, plain[i // 3].flip(-1))
               for i, (x, _) in enumerate(items))


def test_labelled_dataset_pickles_for_workers() -> None:
    dataset = build_dataset("moons", n_points=20, labels=True)
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.class_names == dataset.class_names
    assert all(torch.equal(a, b) for a, b in zip(copy[3], dataset[3], strict=True))


def test_tensor_datamodule_labels() -> None:
    data = torch.randn(12, 2)
    dm = TensorDataModule(data, batch_size=4, kind="points", labels=torch.arange(12) % 3)
    assert isinstance(dm, DiffusionDataModule) and dm.num_classes == 3
    assert dm.class_names == ("0", "1", "2") and torch.equal(dm.data, data)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 2) and y.dtype == torch.int64
    named = TensorDataModule(data, kind="points", labels=torch.zeros(12, dtype=torch.long),
                             class_names=["a", "b"])
    assert named.num_classes == 2 and named.class_names == ("a", "b")
    plain = TensorDataModule(data, kind="points")
    assert plain.num_classes is None and plain.class_names is None


@pytest.mark.parametrize("labels, names, match", [
    (torch.arange(5), None, "shape"),
    (torch.rand(12), None, "integer tensor"),
    (torch.full((12,), 2), ["a", "b"], "outside 0..1"),
    (None, ["a", "b"], "without labels"),
])
def test_tensor_datamodule_bad_labels(labels, names, match: str) -> None:
    with pytest.raises(DiffcliError, match=match) as info:
        TensorDataModule(torch.randn(12, 2), kind="points", labels=labels, class_names=names)
    assert "\n" not in str(info.value)


def test_head_is_the_first_items_in_order_without_flips():
    from diffcli.data.registry import build_dataset, make_datamodule

    dm = make_datamodule("digits", batch_size=7, random_flip=True)
    x, y = dm.head(20)
    again, _ = dm.head(20)
    ref = build_dataset("digits", labels=True)
    assert torch.equal(x, again) and len(x) == 20 and y is not None
    assert torch.equal(x[3], ref[3][0]) and int(y[3]) == int(ref[3][1])
