"""Data loading through the registry: toy sets, digits, MNIST from the offline folder, synthetic
stand-ins for Fashion-MNIST, CIFAR-10, CelebA and image folders, the data module, and every
``conf/dataset/*.yaml`` composed and built."""

from __future__ import annotations

import gzip
import pickle
import shutil
import struct
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torchvision.datasets
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

import diffcli.data.datamodule
from diffcli.components import ADVISORY_KEYS, COMPONENTS, build, conf_dir, resolve_target
from diffcli.data.datamodule import DiffusionDataModule, TensorDataModule
from diffcli.data.registry import (
    DATASETS,
    IMAGE_DATASETS,
    NATIVE_SIZES,
    POINT_DATASETS,
    build_dataset,
    dataset_spec,
    make_datamodule,
)
from diffcli.data.sources import celeba_files, load_cifar10_uint8
from diffcli.data.vision import ImageFiles, TensorSamples, UInt8Images
from diffcli.errors import DatasetNotFoundError, DiffcliError

SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
REGISTRY_TARGET = "diffcli.data.registry.make_datamodule"
FORMER_TARGET = "diffcli.data.datamodule.make_datamodule"  # named by older checkpoints


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"offline data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def assert_plain_one_line(message: str) -> None:
    """A data-layer error: one line, and no command-line syntax (the CLI adds key names)."""
    assert "\n" not in message
    for cli_syntax in ("`", "diffcli ", "dataset.", "dataset="):
        assert cli_syntax not in message, message


# --- toy points ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POINT_DATASETS)
def test_toy_shape_determinism_and_scale(name: str) -> None:
    dataset = build_dataset(name, n_points=2000, seed=3)
    x = dataset.data
    assert x.shape == (2000, 2) and x.dtype == torch.float32 and dataset[0].shape == (2,)
    assert torch.isfinite(x).all()
    assert torch.equal(x, build_dataset(name, n_points=2000, seed=3).data)
    assert not torch.equal(x, build_dataset(name, n_points=2000, seed=4).data)
    assert x.mean(0).abs().max() < 0.2
    std = x.std(0)
    assert ((std > 0.3) & (std < 2.0)).all(), std


def test_toy_rejects_non_positive_n() -> None:
    with pytest.raises(DiffcliError, match="positive integer"):
        build_dataset("moons", n_points=0)


# --- digits ----------------------------------------------------------------------------------


def test_digits_native_size_is_8() -> None:
    assert NATIVE_SIZES["digits"] == 8 and dataset_spec("digits").native_size == 8
    images = build_dataset("digits").data
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() == -1.0 and images.max() == 1.0
    assert set(torch.unique(images * 8 + 8).round().tolist()) <= set(range(17))  # 0..16 as is


def test_digits_upsampled_to_16() -> None:
    native = build_dataset("digits").data
    images = build_dataset("digits", image_size=16).data
    assert images.shape == (1797, 1, 16, 16)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert (images.mean((1, 2, 3)) - native.mean((1, 2, 3))).abs().max() < 0.1
    assert make_datamodule("digits", image_size=16, batch_size=8).data_shape == (1, 16, 16)


# --- MNIST from the offline folder -----------------------------------------------------------


def test_mnist_from_shared_folder(shared_data: Path) -> None:
    dataset = build_dataset("mnist", root=shared_data, split="test")
    assert isinstance(dataset, UInt8Images) and len(dataset) == 10000
    assert dataset.images.shape == (10000, 1, 28, 28)
    assert dataset.images.min() == 0 and dataset.images.max() == 255
    x = dataset[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() <= 1.0


def test_mnist_from_gz_only(shared_data: Path, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_TEST_FILES:
        shutil.copyfile(shared_data / "MNIST" / "raw" / f"{name}.gz", raw / f"{name}.gz")
    dataset = build_dataset("mnist", root=tmp_path, split="test", image_size=16)
    reference = build_dataset("mnist", root=shared_data, split="test", image_size=16)
    assert torch.equal(dataset.images, reference.images)
    assert dataset[7].shape == (1, 16, 16) and torch.equal(dataset[7], reference[7])


def test_mnist_missing_root_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        build_dataset("mnist", root=missing, split="test")
    message = str(info.value)
    assert_plain_one_line(message)
    assert str(missing.resolve() / "MNIST" / "raw") in message
    assert "t10k-images-idx3-ubyte[.gz]" in message and "set download to true" in message


def test_mnist_train_split_absent(shared_data: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte"):
        build_dataset("mnist", root=shared_data, split="train")


def test_mnist_needs_root() -> None:
    with pytest.raises(DatasetNotFoundError, match="set root to the folder that holds MNIST/raw"):
        build_dataset("mnist", split="test")


def test_unknown_split() -> None:
    with pytest.raises(DiffcliError, match="unknown MNIST split 'valid'"):
        build_dataset("mnist", root="/nonexistent", split="valid")


# --- the data module -------------------------------------------------------------------------


def test_datamodule_image_batches() -> None:
    dm = make_datamodule("digits", batch_size=32)
    assert isinstance(dm, DiffusionDataModule)
    assert dm.kind == "image" and dm.data_shape == (1, 8, 8) and dm.num_samples == 1797
    assert dm.data is not None and dm.data.shape == (1797, 1, 8, 8)
    x, y = next(iter(dm.train_dataloader()))  # digits are labelled: (x, y) batches
    assert isinstance(x, torch.Tensor) and x.shape == (32, 1, 8, 8) and y.shape == (32,)


def test_make_datamodule_points() -> None:
    dm = make_datamodule("swiss_roll", batch_size=50, n_points=500, seed=1)
    assert dm.kind == "points" and dm.data_shape == (2,)
    assert torch.equal(dm.data, build_dataset("swiss_roll", n_points=500, seed=1).data)
    batches = list(dm.train_dataloader())
    assert len(batches) == 10
    assert all(isinstance(b, torch.Tensor) and b.shape == (50, 2) for b in batches)


def test_make_datamodule_mnist(shared_data: Path) -> None:
    dm = make_datamodule("mnist", root=shared_data, split="test", image_size=16, batch_size=8)
    assert dm.data_shape == (1, 16, 16) and dm.num_samples == 10000 and dm.data is None
    assert next(iter(dm.train_dataloader()))[0].shape == (8, 1, 16, 16)  # (x, y) batches


def test_tensor_datamodule() -> None:
    data = torch.randn(10, 2, dtype=torch.float64)
    dm = TensorDataModule(data, batch_size=128, kind="points")
    assert isinstance(dm, DiffusionDataModule) and dm.data.dtype == torch.float32
    assert dm.batch_size == 10  # clamped to the dataset size
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and batches[0].shape == (10, 2)


def test_datamodule_rejects_mismatched_kind() -> None:
    with pytest.raises(DiffcliError, match="image samples must have 3 dimensions"):
        TensorDataModule(torch.randn(10, 2), kind="image")
    with pytest.raises(DiffcliError, match="unknown data kind"):
        TensorDataModule(torch.randn(10, 2), kind="pixels")


@pytest.mark.parametrize("call", [build_dataset, make_datamodule, dataset_spec])
def test_unknown_dataset_name(call) -> None:
    with pytest.raises(DiffcliError) as info:
        call("cifar100")
    message = str(info.value)
    assert_plain_one_line(message)
    assert all(name in message for name in DATASETS)


# --- synthetic stand-ins for the datasets that are not available offline --------------------

CONF_DIR = conf_dir()
CIFAR_PER_BATCH = 10
CIFAR_TEST_SIZE = 7
KNOWN_PIXEL = (1, 2, 5)  # (channel, row, column) of image 0 that holds KNOWN_VALUE
KNOWN_VALUE = 51  # 51 / 255 * 2 - 1 = -0.6


def _write_cifar_batch(path: Path, n: int, seed: int) -> np.ndarray:
    """A CIFAR-10 style pickle of ``n`` random images; returns its data (n, 3072) uint8."""
    data = np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"fake", b"labels": [i % 10 for i in range(n)], b"data": data,
             b"filenames": [f"img{i}.png".encode() for i in range(n)]}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return data


@pytest.fixture()
def cifar_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        data = _write_cifar_batch(folder / f"data_batch_{i}", CIFAR_PER_BATCH, seed=i)
        if i == 1:
            c, y, x = KNOWN_PIXEL
            data[0, c * 1024 + y * 32 + x] = KNOWN_VALUE
            batch = {b"labels": [0] * CIFAR_PER_BATCH, b"data": data}
            (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    _write_cifar_batch(folder / "test_batch", CIFAR_TEST_SIZE, seed=9)
    return tmp_path


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """Write uint8 ``array`` in the idx format (magic 0x0000 08 ndim, big-endian dims)."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _fake_mnist_like(root: Path, folder: str, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """idx files for each split in ``sizes`` under root/folder/raw (train gzipped, test not)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    images = {}
    for split, n in sizes.items():
        prefix = "train" if split == "train" else "t10k"
        pixels = np.random.default_rng(n).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        pixels[0, 0, 0], pixels[0, 0, 1] = 0, 255
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", pixels, gz=split == "train")
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz=split == "train")
        images[split] = pixels
    return images


@pytest.fixture()
def fashion_root(tmp_path: Path) -> Path:
    _fake_mnist_like(tmp_path, "FashionMNIST", {"train": 12, "test": 5})
    return tmp_path


CELEBA_PARTITION = ["0", "0", "0", "1", "2", "2"]


def _face() -> Image.Image:
    """A 178x218 RGB 'face': (128, 255, 255) inside the 140x140 center crop, black outside."""
    pixels = np.zeros((218, 178, 3), dtype=np.uint8)
    pixels[39:179, 19:159] = (128, 255, 255)
    return Image.fromarray(pixels)


def _fake_celeba(folder: Path, partition_name: str = "list_eval_partition.txt") -> Path:
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    lines = ["image_id,partition"] if partition_name.endswith(".csv") else []
    for i, part in enumerate(CELEBA_PARTITION, start=1):
        _face().save(images / f"{i:06d}.jpg", quality=95)
        sep = "," if partition_name.endswith(".csv") else " "
        lines.append(f"{i:06d}.jpg{sep}{part}")
    (folder / partition_name).write_text("\n".join(lines) + "\n")
    return images


@pytest.fixture()
def celeba_root(tmp_path: Path) -> Path:
    _fake_celeba(tmp_path / "celeba")
    return tmp_path


def _half_split(width: int, height: int) -> Image.Image:
    """Left half black, right half white (or top/bottom when taller than wide)."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    if width >= height:
        pixels[:, width // 2:] = 255
    else:
        pixels[height // 2:, :] = 255
    return Image.fromarray(pixels).convert("RGB")


@pytest.fixture()
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "pictures"
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    (root / ".cache").mkdir()
    _half_split(128, 64).save(root / "a" / "wide.png")
    _half_split(32, 96).save(root / "a" / "b" / "tall.PNG")
    Image.new("L", (17, 33), 200).save(root / "c" / "gray.png")
    Image.new("RGBA", (40, 40), (255, 0, 0, 80)).save(root / "c" / "rgba.png")
    Image.new("RGB", (50, 45), (0, 0, 255)).save(root / "photo.jpg")
    Image.new("RGB", (8, 8)).save(root / ".cache" / "hidden.png")
    (root / "notes.txt").write_text("not an image")
    return root


# --- CIFAR-10 ----------------------------------------------------------------------------


def test_cifar10_train_and_test_splits(cifar_root: Path) -> None:
    train = build_dataset("cifar10", root=cifar_root, split="train")
    test = build_dataset("cifar10", root=cifar_root, split="test")
    assert len(train) == 5 * CIFAR_PER_BATCH and len(test) == CIFAR_TEST_SIZE
    x = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x[KNOWN_PIXEL].item() == pytest.approx(KNOWN_VALUE / 255 * 2 - 1)
    everything = torch.stack([train[i] for i in range(len(train))])
    assert everything.min() == -1.0 and everything.max() == 1.0


def test_cifar10_row_major_chw_layout(cifar_root: Path) -> None:
    images, labels = load_cifar10_uint8(cifar_root, split="test")
    with (cifar_root / "cifar-10-batches-py" / "test_batch").open("rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    assert images.shape == (CIFAR_TEST_SIZE, 3, 32, 32) and images.dtype == torch.uint8
    assert images[3, 2, 31, 0].item() == raw[3, 2 * 1024 + 31 * 32 + 0]
    assert labels.tolist() == [i % 10 for i in range(CIFAR_TEST_SIZE)]


def test_cifar10_other_size(cifar_root: Path) -> None:
    dataset = build_dataset("cifar10", root=cifar_root, split="test", image_size=16)
    assert dataset[0].shape == (3, 16, 16)
    assert dataset[0].min() >= -1.0 and dataset[0].max() <= 1.0


def test_cifar10_refuses_code_in_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": print}))
    with pytest.raises(DiffcliError, match="refusing to unpickle builtins.print"):
        build_dataset("cifar10", root=tmp_path, split="test")


# --- Fashion-MNIST (and MNIST through the same reader) -----------------------------------------


@pytest.mark.parametrize("split, size", [("train", 12), ("test", 5)])  # train is .gz, test not
def test_fashion_mnist_idx_files(fashion_root: Path, split: str, size: int) -> None:
    dataset = build_dataset("fashion_mnist", root=fashion_root, split=split)
    assert len(dataset) == size and dataset[0].shape == (1, 28, 28)
    assert dataset[0][0, 0, 0].item() == -1.0 and dataset[0][0, 0, 1].item() == 1.0


def test_fashion_mnist_matches_file_bytes(tmp_path: Path) -> None:
    pixels = _fake_mnist_like(tmp_path, "FashionMNIST", {"test": 4})["test"]
    dataset = build_dataset("fashion_mnist", root=tmp_path, split="test")
    expected = torch.from_numpy(pixels).float() / 127.5 - 1
    assert torch.allclose(torch.stack([dataset[i][0] for i in range(4)]), expected, atol=1e-6)


def test_corrupt_idx_file_is_one_line(tmp_path: Path) -> None:
    _fake_mnist_like(tmp_path, "MNIST", {"test": 3})
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03abc")
    with pytest.raises(DiffcliError) as info:
        build_dataset("mnist", root=tmp_path, split="test")
    message = str(info.value)
    assert_plain_one_line(message)
    assert message.startswith("could not read the MNIST test idx files in ")
    assert str(tmp_path / "MNIST" / "raw") in message


def test_fake_mnist_through_datamodule(tmp_path: Path) -> None:
    _fake_mnist_like(tmp_path, "MNIST", {"test": 6})
    dm = make_datamodule("mnist", root=tmp_path, split="test", batch_size=4)
    assert isinstance(dm, DiffusionDataModule) and not dm.random_flip and dm.data is None
    assert dm.data_shape == (1, 28, 28) and dm.num_samples == 6


# --- CelebA --------------------------------------------------------------------------------


@pytest.mark.parametrize("split, size", [("train", 3), ("valid", 1), ("test", 2), ("all", 6)])
def test_celeba_splits(celeba_root: Path, split: str, size: int) -> None:
    dataset = build_dataset("celeba", root=celeba_root, split=split)
    assert len(dataset) == size
    x = dataset[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32  # 64: the native size
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_celeba_center_crop(celeba_root: Path) -> None:
    x = build_dataset("celeba", root=celeba_root, split="all", image_size=64)[0]
    # the crop is exactly the white 140x140 window: no black border survives
    assert x[1:].min() > 0.8, x[1:].min()
    assert x[0].mean().item() == pytest.approx(128 / 127.5 - 1, abs=0.05)


def test_celeba_picks_files_by_partition(celeba_root: Path) -> None:
    files = celeba_files(celeba_root, split="test")
    assert [p.name for p in files] == ["000005.jpg", "000006.jpg"]
    assert files[0].parent == celeba_root / "celeba" / "img_align_celeba"


@pytest.mark.parametrize("layout", ["root_is_celeba_folder", "kaggle_csv_nested"])
def test_celeba_other_layouts(tmp_path: Path, layout: str) -> None:
    if layout == "root_is_celeba_folder":
        _fake_celeba(tmp_path)
    else:
        images = _fake_celeba(tmp_path / "celeba", "list_eval_partition.csv")
        nested = images / "img_align_celeba"
        nested.mkdir()
        for path in sorted(images.glob("*.jpg")):
            path.rename(nested / path.name)
    assert len(build_dataset("celeba", root=tmp_path, split="train")) == 3


def test_celeba_cache_equals_lazy(celeba_root: Path) -> None:
    lazy = build_dataset("celeba", root=celeba_root, split="all", image_size=16)
    cached = build_dataset("celeba", root=celeba_root, split="all", image_size=16, cache=True)
    assert isinstance(cached, UInt8Images) and len(lazy) == len(cached)
    assert all(torch.equal(lazy[i], cached[i]) for i in range(len(lazy)))


# --- any folder of images ----------------------------------------------------------------------


def test_imagefolder_finds_nested_images(folder_root: Path) -> None:
    dataset = build_dataset("imagefolder", root=folder_root, image_size=32)
    names = sorted(p.name for p in dataset.paths)
    assert names == ["gray.png", "photo.jpg", "rgba.png", "tall.PNG", "wide.png"]
    for i in range(len(dataset)):
        x = dataset[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0


def _item(dataset: ImageFiles, name: str) -> torch.Tensor:
    return dataset[[p.name for p in dataset.paths].index(name)]


def test_imagefolder_center_crop_keeps_the_middle(folder_root: Path) -> None:
    dataset = build_dataset("imagefolder", root=folder_root, image_size=32)
    wide = _item(dataset, "wide.png")  # 128x64 -> 64x32 -> columns 16..47: split at column 16
    assert torch.allclose(wide[:, :, :14], torch.tensor(-1.0), atol=0.02)
    assert torch.allclose(wide[:, :, 18:], torch.tensor(1.0), atol=0.02)
    tall = _item(dataset, "tall.PNG")  # 32x96 -> rows 32..63: split at row 16
    assert torch.allclose(tall[:, :14], torch.tensor(-1.0), atol=0.02)
    assert torch.allclose(tall[:, 18:], torch.tensor(1.0), atol=0.02)


def test_imagefolder_grayscale_and_alpha(folder_root: Path) -> None:
    rgb = build_dataset("imagefolder", root=folder_root, image_size=8)
    gray_in_rgb = _item(rgb, "gray.png")
    assert torch.allclose(gray_in_rgb, torch.tensor(200 / 127.5 - 1), atol=1e-5)
    rgba = _item(rgb, "rgba.png")  # alpha dropped, color kept
    assert rgba[0].min() == 1.0 and rgba[1:].max() == -1.0
    gray = build_dataset("imagefolder", root=folder_root, image_size=8, channels=1)
    assert gray[0].shape == (1, 8, 8)
    assert torch.allclose(_item(gray, "gray.png"), torch.tensor(200 / 127.5 - 1), atol=1e-5)


def test_imagefolder_cache(folder_root: Path) -> None:
    lazy = build_dataset("imagefolder", root=folder_root, image_size=8)
    cached = build_dataset("imagefolder", root=folder_root, image_size=8, cache=True)
    assert isinstance(cached, UInt8Images) and len(cached) == len(lazy) == 5
    assert all(torch.equal(lazy[i], cached[i]) for i in range(len(lazy)))


def test_imagefolder_rejects_bad_channels(folder_root: Path) -> None:
    with pytest.raises(DiffcliError, match="channels"):
        build_dataset("imagefolder", root=folder_root, channels=4)


def test_imagefolder_cannot_be_downloaded(folder_root: Path) -> None:
    with pytest.raises(DiffcliError) as info:
        build_dataset("imagefolder", root=folder_root, download=True)
    assert_plain_one_line(str(info.value))
    assert "cannot be downloaded: set download to false" in str(info.value)


def test_unreadable_image_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    dataset = build_dataset("imagefolder", root=tmp_path, image_size=8)
    with pytest.raises(DiffcliError) as info:
        dataset[0]
    assert "\n" not in str(info.value) and str(tmp_path / "broken.png") in str(info.value)


# --- missing data: one clear line, no command-line syntax ---------------------------------------


def _one_line_error(name: str, **kwargs: object) -> str:
    with pytest.raises(DatasetNotFoundError) as info:
        build_dataset(name, **kwargs)
    message = str(info.value)
    assert_plain_one_line(message)
    return message


def test_missing_cifar10(tmp_path: Path) -> None:
    message = _one_line_error("cifar10", root=tmp_path, split="train")
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "data_batch_5" in message
    assert "set download to true" in message and "cifar-10-python.tar.gz" in message


def test_missing_cifar10_test_split(cifar_root: Path) -> None:
    (cifar_root / "cifar-10-batches-py" / "test_batch").unlink()
    message = _one_line_error("cifar10", root=cifar_root, split="test")
    assert "missing test_batch" in message


def test_missing_fashion_mnist(tmp_path: Path) -> None:
    message = _one_line_error("fashion_mnist", root=tmp_path, split="train")
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "set download to true" in message


def test_missing_celeba(tmp_path: Path) -> None:
    message = _one_line_error("celeba", root=tmp_path)
    assert str(tmp_path / "celeba" / "img_align_celeba") in message
    assert "list_eval_partition.txt" in message and "Google Drive" in message
    assert "set download to true" in message


def test_missing_celeba_partition(celeba_root: Path) -> None:
    (celeba_root / "celeba" / "list_eval_partition.txt").unlink()
    message = _one_line_error("celeba", root=celeba_root, split="train")
    assert str(celeba_root / "celeba" / "list_eval_partition.txt") in message
    assert "set split to all" in message
    assert len(build_dataset("celeba", root=celeba_root, split="all")) == 6


def test_missing_celeba_images(celeba_root: Path) -> None:
    (celeba_root / "celeba" / "img_align_celeba" / "000002.jpg").unlink()
    message = _one_line_error("celeba", root=celeba_root, split="train")
    assert "000002.jpg" in message and "1 of 3" in message


def test_empty_image_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("no pictures")
    message = _one_line_error("imagefolder", root=tmp_path)
    assert f"no images found under {tmp_path}" in message and "*.png, *.jpg" in message


def test_image_folder_does_not_exist(tmp_path: Path) -> None:
    message = _one_line_error("imagefolder", root=tmp_path / "nope")
    assert str(tmp_path / "nope") in message


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "celeba", "imagefolder"])
def test_root_not_set(name: str) -> None:
    message = _one_line_error(name, root=None)
    assert "needs a data folder: set root to the folder that holds" in message
    assert ("with download set to true" in message) is (name != "imagefolder")


@pytest.mark.parametrize("name, cls", [
    ("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), ("cifar10", "CIFAR10"),
    ("celeba", "CelebA"),
])
def test_failed_download_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, cls: str
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>\n"
                      "  (traceback details)")

    monkeypatch.setattr(torchvision.datasets, cls, offline)
    message = _one_line_error(name, root=tmp_path, download=True)
    assert message.startswith("could not download") and "name resolution" in message
    assert "traceback details" not in message and str(tmp_path) in message


# --- data modules ---------------------------------------------------------------------------


def test_cifar10_datamodule_contract(cifar_root: Path) -> None:
    dm = make_datamodule("cifar10", root=cifar_root, batch_size=8)
    assert dm.kind == "image" and dm.data_shape == (3, 32, 32) and dm.data is None
    assert dm.num_samples == 50 and dm.batch_size == 8 and dm.random_flip
    batches = list(dm.train_dataloader())
    assert len(batches) == 50 // 8
    for batch, labels in batches:  # cifar10 is labelled: (x, y) batches
        assert isinstance(batch, torch.Tensor) and batch.shape == (8, 3, 32, 32)
        assert labels.shape == (8,) and labels.dtype == torch.int64
        assert batch.dtype == torch.float32 and batch.min() >= -1 and batch.max() <= 1


def test_image_datamodule_clamps_batch_size(folder_root: Path) -> None:
    dm = make_datamodule("imagefolder", root=folder_root, image_size=8, batch_size=128)
    assert dm.batch_size == 5 and [b.shape for b in dm.train_dataloader()] == [(5, 3, 8, 8)]


def _flipped_and_plain(batches: list[torch.Tensor], originals: torch.Tensor) -> tuple[int, int]:
    """How many samples equal an original mirrored, and how many equal one as is."""
    samples = torch.cat(batches).flatten(1)  # (B, C*H*W)
    plain = (samples[:, None] == originals.flatten(1)[None]).all(-1).any(1)
    mirrored = (samples[:, None] == originals.flip(-1).flatten(1)[None]).all(-1).any(1)
    assert (plain | mirrored).all()
    return int(mirrored.sum()), int(plain.sum())


def test_random_flip(cifar_root: Path) -> None:
    dataset = build_dataset("cifar10", root=cifar_root, split="train")
    originals = torch.stack([dataset[i] for i in range(len(dataset))])
    flipping = DiffusionDataModule(dataset, batch_size=10, random_flip=True)
    L.seed_everything(0, verbose=False)
    first = list(flipping.train_dataloader())
    mirrored, plain = _flipped_and_plain(first, originals)
    assert mirrored > 0 and plain > 0
    L.seed_everything(0, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(first, flipping.train_dataloader(), strict=True))
    steady = DiffusionDataModule(dataset, batch_size=10, random_flip=False)
    assert _flipped_and_plain(list(steady.train_dataloader()), originals) == (0, 50)


def test_build_dataset_random_flip(cifar_root: Path) -> None:
    dataset = build_dataset("cifar10", root=cifar_root, split="test")
    flipping = build_dataset("cifar10", root=cifar_root, split="test", random_flip=True)
    originals = torch.stack([dataset[i] for i in range(len(dataset))])
    L.seed_everything(0, verbose=False)
    items = [torch.stack([flipping[i] for i in range(len(flipping))]) for _ in range(4)]
    mirrored, plain = _flipped_and_plain(items, originals)
    assert mirrored > 0 and plain > 0
    with pytest.raises(DiffcliError, match="images only"):
        build_dataset("moons", n_points=10, random_flip=True)


def test_flip_defaults() -> None:
    assert make_datamodule("digits").random_flip is False
    assert make_datamodule("digits", random_flip=True).random_flip is True
    with pytest.raises(DiffcliError, match="random_flip"):
        make_datamodule("moons", n_points=100, random_flip=True)


def test_loader_with_worker_processes(folder_root: Path) -> None:
    dm = make_datamodule("imagefolder", root=folder_root, image_size=8, batch_size=2,
                         num_workers=2)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    batches = list(loader)
    assert len(batches) == 2 and all(b.shape == (2, 3, 8, 8) for b in batches)


def test_datamodule_rejects_bad_arguments(folder_root: Path) -> None:
    dataset = build_dataset("imagefolder", root=folder_root, image_size=8)
    with pytest.raises(DiffcliError, match="batch_size"):
        DiffusionDataModule(dataset, batch_size=0)
    with pytest.raises(DiffcliError, match="num_workers"):
        DiffusionDataModule(dataset, num_workers=-1)
    with pytest.raises(DiffcliError, match="image samples"):
        DiffusionDataModule(TensorSamples(torch.zeros(4, 2)))
    with pytest.raises(DiffcliError, match="empty"):
        DiffusionDataModule(TensorSamples(torch.zeros(0, 2)), kind="points")


# --- the registry and the Hydra configs -------------------------------------------------------

DATASET_CONFIGS = sorted((CONF_DIR / "dataset").glob("*.yaml"))


def _compose(overrides: list[str]) -> DictConfig:
    from diffcli.cli.resolvers import register_resolvers

    register_resolvers()  # as the app does first: trainer.max_steps interpolates one
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_registry_names_are_the_config_options() -> None:
    assert sorted(DATASETS) == sorted(p.stem for p in DATASET_CONFIGS)
    assert set(IMAGE_DATASETS) | set(POINT_DATASETS) == set(DATASETS)
    assert not set(IMAGE_DATASETS) & set(POINT_DATASETS)
    assert set(NATIVE_SIZES) == set(IMAGE_DATASETS)


@pytest.mark.parametrize("path", DATASET_CONFIGS, ids=lambda p: p.stem)
def test_config_agrees_with_registry(path: Path) -> None:
    node = yaml.safe_load(path.read_text())
    spec = dataset_spec(path.stem)
    assert node["_target_"] == REGISTRY_TARGET and node["name"] == path.stem
    assert node.get("image_size", spec.native_size) == spec.native_size  # yaml = native size
    assert node.get("random_flip", spec.flip_by_default) is spec.flip_by_default
    assert node["train_steps"] > 0


# dataset name -> (fixture making its files, or None) ; mnist.yaml reads the test split
CONFIG_DATA = {"mnist": "mnist_root", "fashion_mnist": "fashion_root", "cifar10": "cifar_root",
               "celeba": "celeba_root", "imagefolder": "folder_root"}


@pytest.fixture()
def mnist_root(tmp_path: Path) -> Path:
    _fake_mnist_like(tmp_path, "MNIST", {"test": 5})
    return tmp_path


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_config_composes_and_builds(request: pytest.FixtureRequest, name: str) -> None:
    overrides = [f"dataset={name}"]
    if name in CONFIG_DATA:
        root = request.getfixturevalue(CONFIG_DATA[name])
        overrides += [f"dataset.root={root}", "dataset.num_workers=0"]
    cfg = _compose(overrides)
    assert cfg.trainer.max_steps == cfg.dataset.train_steps
    node = {k: v for k, v in cfg.dataset.items() if k not in ADVISORY_KEYS["dataset"]}
    dm = build("dataset", node)
    spec = dataset_spec(name)
    shape = (2,) if spec.kind == "points" else (spec.native_size,) * 2
    assert isinstance(dm, DiffusionDataModule) and dm.kind == spec.kind
    assert dm.data_shape[-len(shape):] == shape and dm.random_flip is spec.flip_by_default
    batch = next(iter(dm.train_dataloader()))
    if dm.num_classes is not None:  # labelled data: (x, y) batches
        batch, labels = batch
        assert labels.shape == (dm.batch_size,) and labels.dtype == torch.int64
    assert isinstance(batch, torch.Tensor) and batch.shape == (dm.batch_size, *dm.data_shape)
    assert (dm.data is not None) is (name in POINT_DATASETS or name == "digits")


def test_config_without_root_is_one_line() -> None:
    node = {k: v for k, v in _compose(["dataset=imagefolder"]).dataset.items()
            if k not in ADVISORY_KEYS["dataset"]}
    with pytest.raises(DatasetNotFoundError) as info:
        build("dataset", node)
    assert_plain_one_line(str(info.value))
    assert "set root to the folder that holds the images" in str(info.value)


def test_former_factory_path_still_builds() -> None:
    """Checkpoints written before the registry name diffcli.data.datamodule.make_datamodule."""
    assert {REGISTRY_TARGET, FORMER_TARGET} <= COMPONENTS["dataset"]
    assert diffcli.data.datamodule.make_datamodule is make_datamodule
    assert resolve_target("dataset", FORMER_TARGET) is make_datamodule
    old = build("dataset", {"_target_": FORMER_TARGET, "name": "moons", "n_points": 64})
    new = build("dataset", {"_target_": REGISTRY_TARGET, "name": "moons", "n_points": 64})
    assert torch.equal(old.data, new.data) and old.data.shape == (64, 2)
