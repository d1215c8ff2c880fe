"""Glue shared by the workflows: building networks from config, reading checkpoints safely."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from diffcli.errors import CheckpointError, DiffcliError
from diffcli.lit.module import CHECKPOINT_KEY

SAFE_TARGET_PREFIX = "diffcli."
BUILT_FROM_CHECKPOINT = ("dataset", "model", "schedule")  # config groups sampling instantiates


def build_datamodule(dataset_cfg: DictConfig) -> Any:
    """Instantiate the dataset group's datamodule (``train_steps`` is advice for the trainer)."""
    return instantiate({k: v for k, v in dataset_cfg.items() if k != "train_steps"})


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
    try:
        net = instantiate(model_cfg, **shape_kw)
    except Exception as e:  # noqa: BLE001 - Hydra wraps the network's own ValueError
        cause = e.__cause__ if isinstance(e.__cause__, ValueError | TypeError) else None
        if cause is None:
            raise
        raise DiffcliError(f"model: {cause}") from None
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


def _check_targets(node: Any, where: str) -> None:
    """Refuse to instantiate anything outside diffcli from a checkpoint's config."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(SAFE_TARGET_PREFIX):
            raise CheckpointError(f"{where}: refusing to build {target!r} from a checkpoint")
        for v in node.values():
            _check_targets(v, where)


def load_checkpoint(path: str | Path) -> LoadedRun:
    """Read a diffcli checkpoint with ``weights_only=True`` (no arbitrary pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason[:160]})") from None
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "config" not in meta or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} was not written by `diffcli train` (no diffcli metadata)")
    for key in BUILT_FROM_CHECKPOINT:
        _check_targets(meta["config"].get(key), str(path))
    data = meta.get("data")
    info = DataInfo(str(data["kind"]), tuple(int(d) for d in data["shape"])) if data else None
    return LoadedRun(path, OmegaConf.create(meta["config"]), ckpt["state_dict"],
                     int(ckpt.get("global_step", 0)), info)


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
