"""A trained network as ``<name>.safetensors`` plus ``<name>.json``: weights that load without
pickle, and the run's resolved config beside them.

The JSON sidecar holds what a checkpoint's ``diffcli`` entry holds (``config``, ``data``) and
the step; the safetensors header records the SHA-256 of that description, so an edited sidecar
(another network, another ``_target_``) is refused instead of silently loaded::

    model.safetensors   {"net.<name>": tensor, ...}      header: {"format": "diffcli",
                                                                  "description_sha256": ...}
    model.json          {"diffcli_export": 1, "config": {...}, "data": {...},
                         "global_step": 1200, "weights": "ema", "source": "<ckpt>"}

:func:`read_safetensors` returns the same top-level mapping as a Lightning checkpoint of
``diffcli train`` (``{"diffcli": {"config", "data"}, "state_dict", "global_step"}``), so the
same checks apply to both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from diffcli.errors import CheckpointError
from diffcli.files import atomic_write, atomic_write_text, dumps_json

FORMAT = "diffcli"
VERSION = 1


def sidecar(path: Path) -> Path:
    """``model.safetensors`` -> ``model.json``."""
    return path.with_suffix(".json")


def description_sha256(description: dict[str, Any]) -> str:
    """SHA-256 of the sidecar's content (canonical JSON: sorted keys, no spaces)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_safetensors(path: Path, weights: dict[str, torch.Tensor], config: dict[str, Any],
                      data: dict[str, Any] | None, global_step: int, which: str,
                      source: str) -> Path:
    """Write ``weights`` (the network's state dict, no prefix) to ``path`` and the description
    to its sidecar; both atomically. ``which``: "ema" or "raw" weights."""
    from safetensors.torch import save

    description = {"diffcli_export": VERSION, "config": config, "data": data,
                   "global_step": int(global_step), "weights": which, "source": source}
    description = json.loads(dumps_json(description))  # exactly what the sidecar will hold
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in weights.items()}
    blob = save(tensors, metadata={"format": FORMAT,
                                   "description_sha256": description_sha256(description)})
    atomic_write(path, lambda f: f.write(blob))
    atomic_write_text(sidecar(path), dumps_json(description))
    return path


def _header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def read_safetensors(path: Path) -> dict[str, Any]:
    """The checkpoint-shaped mapping of an exported ``path`` (see the module docstring);
    :class:`CheckpointError` with one line for a file that is not one, a missing sidecar, or a
    sidecar that does not belong to the weights."""
    from safetensors.torch import load_file

    try:
        header = _header(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"{path} is not a safetensors file ({e})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} was not exported by `diffcli export` (no diffcli "
                              "header); a diffusers folder loads as ckpt=<folder>")
    try:
        description = json.loads(sidecar(path).read_text())
    except OSError:
        raise CheckpointError(f"{path}: its description {sidecar(path).name} is missing; "
                              "export again or put it beside the weights") from None
    except ValueError as e:
        raise CheckpointError(f"{sidecar(path)}: not valid JSON ({e})") from None
    if not isinstance(description, dict) or \
            description_sha256(description) != header.get("description_sha256"):
        raise CheckpointError(f"{path}: refusing to load: {sidecar(path).name} was changed "
                              "after export (it does not match the weights' header)")
    state = load_file(str(path))
    which = description.get("weights")
    if which == "ema":  # both names: sampling with use_ema=true or false gets these weights
        state |= {"ema_" + k: v for k, v in state.items()}
    return {"diffcli": {"config": description.get("config"), "data": description.get("data")},
            "state_dict": state, "global_step": description.get("global_step", 0)}


__all__ = ["description_sha256", "read_safetensors", "sidecar", "write_safetensors"]
