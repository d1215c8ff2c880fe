"""Data loading: toy distributions, digits, MNIST from the offline folder, the data module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from diffcli.data.datamodule import TensorDataModule, build_dataset, make_datamodule
from diffcli.data.images import load_digits_images, load_mnist_images
from diffcli.data.toy import TOY_DATASETS
from diffcli.errors import DatasetNotFoundError, DiffcliError

SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"offline data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_shape_determinism_and_scale(name: str) -> None:
    fn = TOY_DATASETS[name]
    x = fn(2000, seed=3)
    assert x.shape == (2000, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x, fn(2000, seed=3))
    assert not torch.equal(x, fn(2000, seed=4))
    assert x.mean(0).abs().max() < 0.2
    std = x.std(0)
    assert ((std > 0.3) & (std < 2.0)).all(), std


def test_toy_rejects_non_positive_n() -> None:
    with pytest.raises(DiffcliError):
        TOY_DATASETS["moons"](0)


def test_digits_images() -> None:
    images, labels = load_digits_images()
    assert images.shape == (1797, 1, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() < -0.99 and images.max() > 0.99
    assert labels.shape == (1797,) and labels.dtype == torch.long
    assert set(labels.tolist()) == set(range(10))


def test_digits_other_size() -> None:
    images, _ = load_digits_images(image_size=8)
    assert images.shape == (1797, 1, 8, 8)
    assert set(torch.unique(images * 8 + 8).round().tolist()) <= set(range(17))


def test_mnist_from_shared_folder(shared_data: Path) -> None:
    images, labels = load_mnist_images(shared_data, split="test")
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() == -1.0 and images.max() == 1.0
    assert labels.shape == (10000,) and labels.dtype == torch.long
    assert labels.min() == 0 and labels.max() == 9


def test_mnist_from_gz_only(shared_data: Path, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_TEST_FILES:
        shutil.copyfile(shared_data / "MNIST" / "raw" / f"{name}.gz", raw / f"{name}.gz")
    images, labels = load_mnist_images(tmp_path, split="test", image_size=16)
    reference, reference_labels = load_mnist_images(shared_data, split="test", image_size=16)
    assert images.shape == (10000, 1, 16, 16)
    assert torch.equal(images, reference) and torch.equal(labels, reference_labels)


def test_mnist_missing_root_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist_images(missing, split="test")
    message = str(info.value)
    assert "\n" not in message
    assert str(missing.resolve() / "MNIST" / "raw") in message
    assert "t10k-images-idx3-ubyte" in message and "download" in message


def test_mnist_train_split_absent(shared_data: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist_images(shared_data, split="train")


def test_mnist_needs_root() -> None:
    with pytest.raises(DatasetNotFoundError, match="dataset.root"):
        build_dataset("mnist", split="test")


def test_datamodule_image_batches() -> None:
    data, kind = build_dataset("digits")
    dm = TensorDataModule(data, batch_size=32, kind=kind)
    assert dm.kind == "image" and dm.data_shape == (1, 16, 16)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape == (32, 1, 16, 16)


def test_make_datamodule_points() -> None:
    dm = make_datamodule("swiss_roll", batch_size=50, n_points=500, seed=1)
    assert dm.kind == "points" and dm.data_shape == (2,)
    batches = list(dm.train_dataloader())
    assert len(batches) == 10
    assert all(isinstance(b, torch.Tensor) and b.shape == (50, 2) for b in batches)


def test_make_datamodule_mnist(shared_data: Path) -> None:
    dm = make_datamodule("mnist", root=shared_data, split="test", image_size=16, batch_size=8)
    assert dm.data_shape == (1, 16, 16) and dm.num_samples == 10000
    assert next(iter(dm.train_dataloader())).shape == (8, 1, 16, 16)


def test_batch_size_clamped_to_dataset() -> None:
    dm = TensorDataModule(torch.randn(10, 2), batch_size=128, kind="points")
    assert dm.batch_size == 10
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and batches[0].shape == (10, 2)


def test_datamodule_rejects_mismatched_kind() -> None:
    with pytest.raises(DiffcliError):
        TensorDataModule(torch.randn(10, 2), kind="image")


def test_unknown_dataset_name() -> None:
    with pytest.raises(DiffcliError) as info:
        build_dataset("cifar100")
    message = str(info.value)
    assert "\n" not in message and "digits" in message and "moons" in message
