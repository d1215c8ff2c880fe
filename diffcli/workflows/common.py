"""Glue shared by the workflows: building networks from config, reading checkpoints safely."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from diffcli.components import build, check_config, plain
from diffcli.errors import CheckpointError, DiffcliError
from diffcli.lit.checkpoint import first_nonfinite
from diffcli.lit.module import CHECKPOINT_KEY


def build_datamodule(dataset_cfg: Any, *, download_ok: bool = False) -> Any:
    """Build the dataset group's datamodule (``train_steps`` is advice for the trainer).
    Only ``diffcli train`` passes ``download_ok``: a dataset rebuilt from a checkpoint's config
    never downloads (a stored ``download: true`` would write files where the file says)."""
    node = {k: v for k, v in plain(dataset_cfg).items() if k != "train_steps"}
    if not download_ok and "download" in node:
        node["download"] = False
    return build("dataset", node)


def build_net(model_cfg: DictConfig, kind: str, data_shape: tuple[int, ...]) -> nn.Module:
    """Instantiate the network of ``model_cfg`` for data of ``kind`` ("image" or "points")."""
    target = str(model_cfg.get("_target_", ""))
    is_mlp = target.endswith(".MLP")
    if kind == "points" and not is_mlp:
        raise DiffcliError("2-D point data needs model=mlp (the U-Net is for images)")
    if kind == "image" and is_mlp:
        raise DiffcliError("image data needs an image network, e.g. model=unet")
    shape_kw: dict[str, Any] = {"dim": data_shape[0]} if is_mlp else {"in_channels": data_shape[0]}
    if target.endswith(".UNet") and "image_size" not in model_cfg:
        shape_kw["image_size"] = data_shape[-2]  # for attention_resolutions given in pixels
    net = build("model", model_cfg, **shape_kw)
    if kind == "image" and hasattr(net, "check_image_size"):
        try:
            net.check_image_size(data_shape[-2], data_shape[-1])
        except ValueError as e:
            raise DiffcliError(str(e)) from None
    return net


@dataclass(frozen=True)
class DataInfo:
    """What a network needs to know about its data: "image" or "points", and one sample's shape."""

    kind: str
    shape: tuple[int, ...]


@dataclass
class LoadedRun:
    """What a diffcli checkpoint holds: its resolved config and the network's weights."""

    path: Path
    config: DictConfig
    state_dict: dict[str, torch.Tensor]
    global_step: int
    data: DataInfo | None = None  # None in checkpoints older than the "data" entry

    def data_info(self) -> DataInfo:
        """Kind and sample shape, from the checkpoint (or by loading the dataset, for old ones)."""
        if self.data is not None:
            return self.data
        dm = build_datamodule(self.config.dataset)
        return DataInfo(dm.kind, tuple(dm.data_shape))

    def weights(self, prefix: str) -> dict[str, torch.Tensor]:
        """The sub-state-dict under ``prefix`` (e.g. "net." or "ema_net."), prefix stripped."""
        n = len(prefix)
        return {k[n:]: v for k, v in self.state_dict.items() if k.startswith(prefix)}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's top-level dict, read with ``weights_only=True`` (no pickled code runs)
    and memory-mapped (tensors are read from disk only when used)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason[:160]})") from None
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "config" not in meta or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} was not written by `diffcli train` (no diffcli metadata)")
    return ckpt


def _data_info(data: Any, path: Path) -> DataInfo | None:
    if data is None:
        return None
    ok = (isinstance(data, dict) and data.get("kind") in ("image", "points")
          and isinstance(data.get("shape"), list | tuple) and 1 <= len(data["shape"]) <= 4
          and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 65536
                  for d in data["shape"]))
    if not ok:
        raise CheckpointError(f"{path}: refusing to load: its data description {data!r} is not "
                              "a kind and a shape")
    return DataInfo(str(data["kind"]), tuple(int(d) for d in data["shape"]))


def _weights(state: Any, path: Path, check_finite: bool) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: refusing to load: its state_dict is not a mapping of "
                              "names to tensors")
    bad = first_nonfinite(state) if check_finite else None
    if bad is not None:
        raise CheckpointError(f"{path}: refusing to load: {bad} (training diverged); use an "
                              "earlier checkpoint (checkpoints/step-N.ckpt) or retrain with a "
                              "lower lr")
    return state


def load_checkpoint(path: str | Path, *, check_finite: bool = True) -> LoadedRun:
    """Read a diffcli checkpoint safely: ``weights_only`` unpickling, the stored config checked
    as data (:func:`diffcli.components.check_config`: allowlisted ``_target_`` names at the
    group nodes only, no special keys, no interpolations), the data description and weights
    type-checked, and (``check_finite``) every weight finite. Nothing is built here."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    meta = ckpt[CHECKPOINT_KEY]
    check_config(meta["config"], str(path), stored=True)
    info = _data_info(meta.get("data"), path)
    state = _weights(ckpt["state_dict"], path, check_finite)
    step = ckpt.get("global_step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: refusing to load: global_step {step!r} is not a count")
    return LoadedRun(path, OmegaConf.create(meta["config"]), state, step, info)


def find_latest_checkpoint(roots: list[Path], exclude: Path | None = None) -> Path:
    """The newest ``checkpoints/last.ckpt`` under any of ``roots`` (Hydra run dirs), ignoring
    any inside the folder ``exclude`` (e.g. the run that is asking)."""
    skip = exclude.resolve() if exclude is not None else None
    found = [p for r in roots if r.is_dir() for p in r.rglob("checkpoints/last.ckpt")
             if skip is None or skip not in p.resolve().parents]
    if not found:
        where = " or ".join(str(r) for r in roots)
        raise CheckpointError(f"no trained run found under {where}; run `diffcli train` first "
                              "or pass ckpt=<path to a .ckpt>")
    return max(found, key=lambda p: p.stat().st_mtime)


def pick_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DiffcliError(f"device={name} asked for, but no CUDA device is available")
    return torch.device(name)
