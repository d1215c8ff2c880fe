"""Snapshots of power-function EMAs during training, for post-hoc EMA (Karras et al. 2024, EDM2,
Sec. 3.2): ``callbacks.phema.every_n_steps=N``.

:class:`PowerEMASnapshots` keeps, beside the module's own EMA, one power-function EMA of the
network per width in ``sigma_rels`` (EDM2 Eq. 2-3; 0.05 and 0.10 by default, the two profiles
EDM2 stores) and every ``every_n_steps`` optimizer steps (and at the end) writes all of them to
``<run dir>/phema/step-<N>.safetensors`` (atomically: a reader or a ``kill -9`` never leaves a
half file). The profiles are in the callback's checkpoint state, so a resumed run continues
them, and a run resumed from another folder starts with that folder's snapshots. ``diffcli
ema`` (:mod:`diffcli.workflows.ema_rebuild`) rebuilds the EMA of any width from the files
(:mod:`diffcli.lit.posthoc_ema`).

A snapshot file holds, per width ``w``, every parameter of the network as
``"<w>/<name>"`` (float32), with metadata ``step`` (the EMA's update count t) and ``sigma_rels``
(comma-separated, as the keys spell them). safetensors: reading one cannot run code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from diffcli.files import atomic_write
from diffcli.lit.ema import check_ema, gamma_of_sigma_rel, power_ema_decay

__all__ = ["PowerEMASnapshots", "Snapshot", "power_ema_snapshots", "read_snapshots",
           "snapshot_dir"]

FOLDER = "phema"


def snapshot_dir(run_dir: str | Path) -> Path:
    """Where a run's EMA snapshots are: ``<run dir>/phema``."""
    return Path(run_dir) / FOLDER


def _width_key(sigma_rel: float) -> str:
    return f"{sigma_rel:g}"


class PowerEMASnapshots(L.Callback):
    """Power-function EMAs of ``pl_module.net`` at the widths ``sigma_rels``, updated after each
    optimizer step and written every ``every_n_steps`` steps (module docstring)."""

    def __init__(self, run_dir: str | Path, every_n_steps: int,
                 sigma_rels: Sequence[float] = (0.05, 0.10)) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.phema.every_n_steps must be >= 1 (or null: off), got "
                             f"{every_n_steps}")
        if len(sigma_rels) < 1 or len(set(sigma_rels)) != len(sigma_rels):
            raise ValueError(f"callbacks.phema.sigma_rels must be distinct widths, got "
                             f"{list(sigma_rels)}")
        for width in sigma_rels:
            check_ema(None, float(width))
        self.folder = snapshot_dir(run_dir)
        self.every_n_steps = int(every_n_steps)
        self.sigma_rels = [float(w) for w in sigma_rels]
        self.emas: dict[str, dict[str, Tensor]] = {}
        self.step = 0  # EMA updates so far (= optimizer steps)
        self.written = -1  # the step of the last file written

    def _track(self, net: nn.Module) -> dict[str, Tensor]:
        """The parameters (buffers are not averaged: the module's EMA copies them)."""
        return dict(net.named_parameters())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if step <= self.step:  # no optimizer step since the last call (gradient accumulation)
            return
        self.step = step
        self._update(self._track(pl_module.net))
        if step % self.every_n_steps == 0:
            self._write(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A run resumed from another run's checkpoint starts with that run's snapshots up to
        the step it resumes from (hard links where the file system allows, else copies), so
        each run folder holds the whole history ``diffcli ema`` needs."""
        ckpt = Path(trainer.ckpt_path) if trainer.ckpt_path else None
        if ckpt is None or ckpt.parent.name != "checkpoints" or not trainer.is_global_zero:
            return
        source = ckpt.parent.parent / FOLDER
        if source.resolve() == self.folder.resolve():
            return
        for path in sorted(source.glob("step-*.safetensors")):
            target = self.folder / path.name
            if int(path.stem.split("-")[1]) > self.step or target.exists():
                continue
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                atomic_write(target, lambda f, p=path: f.write(p.read_bytes()))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.step > 0 and self.written != self.step:
            self._write(trainer)

    @torch.no_grad()
    def _update(self, weights: dict[str, Tensor]) -> None:
        """One update of every profile toward ``weights`` (the first copies them)."""
        for width in self.sigma_rels:
            key = _width_key(width)
            decay = power_ema_decay(self.step, gamma_of_sigma_rel(width))
            ema = self.emas.get(key)
            if ema is None or decay == 0.0:
                self.emas[key] = {k: v.detach().float().clone() for k, v in weights.items()}
                continue
            for name, value in weights.items():
                ema[name].lerp_(value.detach().float(), 1.0 - decay)

    def _write(self, trainer: L.Trainer) -> None:
        self.written = self.step
        if not trainer.is_global_zero:
            return
        from safetensors.torch import save

        tensors = {f"{w}/{name}": t.contiguous().cpu()
                   for w, ema in self.emas.items() for name, t in ema.items()}
        meta = {"step": str(self.step), "sigma_rels": ",".join(self.emas)}
        path = self.folder / f"step-{self.step:08d}.safetensors"
        atomic_write(path, lambda f: f.write(save(tensors, metadata=meta)))

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "written": self.written, "sigma_rels": self.sigma_rels,
                "emas": self.emas}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if [float(w) for w in state.get("sigma_rels", [])] != self.sigma_rels:
            raise ValueError(f"callbacks.phema.sigma_rels={self.sigma_rels} but the run being "
                             f"resumed kept {state.get('sigma_rels')}: resume with those")
        self.step, self.written = int(state["step"]), int(state["written"])
        self.emas = {k: dict(v) for k, v in state["emas"].items()}

    @property
    def state_key(self) -> str:
        return f"PowerEMASnapshots{json.dumps(self.sigma_rels)}"


def power_ema_snapshots(run_dir: str | Path, every_n_steps: int | None = None,
                        sigma_rels: Sequence[float] = (0.05, 0.10)) -> PowerEMASnapshots | None:
    """The ``callbacks.phema`` entry: :class:`PowerEMASnapshots` (None when ``every_n_steps``
    is None: off)."""
    if every_n_steps is None:
        return None
    return PowerEMASnapshots(run_dir, every_n_steps, sigma_rels)


class Snapshot:
    """One snapshot file: its step and widths (read at once), and per width the EMA's tensors
    (read when asked, so a reconstruction holds one file's tensors at a time)."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "step" not in meta or "sigma_rels" not in meta:
            raise ValueError(f"{path} is not a diffcli EMA snapshot (no step / sigma_rels)")
        self.path = path
        self.step = int(meta["step"])
        self.widths = [float(w) for w in meta["sigma_rels"].split(",")]

    def ema(self, width: float) -> dict[str, Tensor]:
        """The EMA of width ``width`` stored in this file: name -> tensor."""
        from safetensors import safe_open

        prefix = _width_key(width) + "/"
        with safe_open(str(self.path), framework="pt") as f:
            return {k[len(prefix):]: f.get_tensor(k) for k in f.keys()  # noqa: SIM118
                    if k.startswith(prefix)}


def read_snapshots(run_dir: str | Path) -> list[Snapshot]:
    """The run's snapshot files in step order (empty when it kept none)."""
    return [Snapshot(p) for p in sorted(snapshot_dir(run_dir).glob("step-*.safetensors"))]
