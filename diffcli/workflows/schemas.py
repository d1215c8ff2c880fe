"""Typed schemas of each command's top-level keys, checked before any work starts.

The config groups are checked by their components' own signatures (names and types, through
:func:`diffcli.components.check_kwargs`) and built cheaply where that is possible; the
top-level keys of each command have a :class:`Key` each here: a type, a range or choices, and
the one-line meaning that ``diffcli <command> --help`` shows. A bad value is one
:class:`UsageError` line that names the key, the value and what would be accepted (exit 2).
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from diffcli.components import fits
from diffcli.errors import DiffcliError, number_text


class UsageError(DiffcliError):
    """A bad command-line value: usage, exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class Key:
    """One top-level key: its type (a typing hint), bounds and choices, and meaning."""

    type: Any
    help: str = ""
    ge: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None
    nonempty: bool = False
    pattern: str | None = None  # a regular expression the whole value must match

    def describe(self) -> str:
        """"an integer >= 1", "a string: 32 | bf16", ... (for --help)."""
        text = describe(self.type)
        if self.ge is not None:
            text += f" >= {number_text(self.ge)}"
        if self.le is not None:
            text += f" <= {number_text(self.le)}"
        return text

    def check(self, name: str, value: Any) -> None:
        if not fits(value, self.type):
            raise UsageError(f"{name}={value!r} is not {describe(self.type)}")
        if value is None or isinstance(value, bool):
            return
        if self.choices is not None and str(value) not in map(str, self.choices):
            raise UsageError(f"{name}={value!r}: choose one of "
                             f"{', '.join(map(str, self.choices))}")
        if self.nonempty and isinstance(value, str) and not value.strip():
            raise UsageError(f"{name} is empty: give a value or leave the key out")
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            raise UsageError(f"{name}={value!r}: use {self.help}")
        if isinstance(value, int | float):
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"{name}={value!r} must be a finite number")
            if self.ge is not None and value < self.ge:
                raise UsageError(f"{name}={value!r} must be >= {number_text(self.ge)}")
            if self.le is not None and value > self.le:
                raise UsageError(f"{name}={value!r} must be <= {number_text(self.le)}")


def describe(hint: Any) -> str:
    """"an integer", "an integer or null", ... for messages."""
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             type(None): "null", list: "a list", dict: "a mapping (key.sub=value)"}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if origin is list:
        return "a list"
    return names.get(hint, str(hint))


DEVICE = Key(str, "auto | cpu | cuda | cuda:N", pattern=r"auto|cpu|cuda(:\d+)?")
SEEDS = Key(str | int | list | None, "exact seeds: 0-999, or 1,5,7, or a list")

COMMON_SAMPLING: dict[str, Key] = {
    "ckpt": Key(str | None, "a .ckpt file; default: the newest run's last.ckpt", nonempty=True),
    "runs_root": Key(str, "where `diffcli train` puts runs", nonempty=True),
    "steps": Key(int | None, "alias of sampler.steps", ge=1),
    "use_ema": Key(bool, "sample with the EMA weights when the checkpoint has them"),
    "device": DEVICE,
}

GUIDANCE: dict[str, Key] = {
    "classes": Key(str | int | list | None, "class labels to draw: 7, 0-9, [1,3,5] or all "
                   "(default all, for a labelled model)"),
    "classifier": Key(str | None, "classifier guidance: a checkpoint of diffcli train "
                      "task=classifier", nonempty=True),
    "classifier_scale": Key(float | int | None, "classifier guidance scale s (default 1)", ge=0),
    "guidance_interval": Key(list | None, "[sigma_lo, sigma_hi]: guide only there "
                             "(Kynkaanniemi et al. 2024)"),
    "guidance_rescale": Key(float | int, "phi of Lin et al. 2024's rescaled guidance", ge=0,
                            le=1),
    "prompt": Key(str | list | None, "a text-to-image model's caption(s): one grid row each"),
}

SCHEMAS: dict[str, dict[str, Key]] = {
    "train": {
        "seed": Key(int, "seeds weights, noise and data order", ge=0, le=2**32 - 1),
        "resume": Key(str | None, "auto: continue the newest run", choices=("auto", "never")),
        "ckpt_path": Key(str | None, "continue from this checkpoint", nonempty=True),
        "runs_root": Key(str, "where runs go (and where resume=auto looks)", nonempty=True),
        "requeue_signals": Key(list, "in a SLURM job, the signals that save and requeue the job "
                               "(it continues in the same run folder)"),
        "progress_every_s": Key(float | int, "without a terminal: a progress line this often "
                                "(seconds)", ge=0),
        "progress_every_n_steps": Key(int | None, "... or every this many steps", ge=1),
        "conditional": Key(bool, "class-conditional on the dataset's labels (classifier-free "
                           "guidance training)"),
        "task": Key(str, "diffusion | classifier | autoencoder",
                    choices=("diffusion", "classifier", "autoencoder")),
        "latent": Key(dict, "latent diffusion: ckpt= an autoencoder checkpoint or pretrained= "
                      "a diffusers AutoencoderKL folder; cache, scale_factor, sample"),
    },
    "export": {
        "ckpt": Key(str | None, "a .ckpt or run folder; default: the newest run's last.ckpt",
                    nonempty=True),
        "runs_root": Key(str, "where `diffcli train` puts runs", nonempty=True),
        "format": Key(str, "safetensors | diffusers | onnx",
                      choices=("safetensors", "diffusers", "onnx")),
        "weights": Key(str, "ema | raw", choices=("ema", "raw")),
        "out": Key(str | None, "the folder to write (default <run>/export/<format>/)",
                   nonempty=True),
        "overwrite": Key(bool, "replace out/ instead of writing out_2, out_3, ..."),
        "check": Key(bool, "format=onnx: compare onnxruntime with torch"),
    },
    "sample": {
        **COMMON_SAMPLING,
        **GUIDANCE,
        "guidance": Key(float | int | None, "classifier-free guidance scale w: 0 unconditional, "
                        "1 conditional (the default for a conditional model), >1 guided", ge=0),
        "n": Key(int | None, "how many samples (default 64 images or 2000 points)", ge=1),
        "batch_size": Key(int, "samples per network batch", ge=1),
        "seed": Key(int, "sample i uses seed + i", ge=0, le=2**63 - 1),
        "seeds": SEEDS,
        "clip_denoised": Key(bool | None, "alias of sampler.clip_denoised; null: images only"),
        "precision": Key(str | int, "32 | bf16 (CUDA only)", choices=("32", "bf16")),
        "compile": Key(bool, "torch.compile the network"),
        "overwrite": Key(bool, "replace <sampler>-<steps>/ instead of writing _2, _3, ..."),
        "trajectory": Key(int, "save x_t and x0 at every step for this many samples", ge=0),
    },
    "eval_fid": {
        **COMMON_SAMPLING,
        **GUIDANCE,
        "guidance": Key(float | int | list | None, "classifier-free guidance scale w, or a list "
                        "to sweep: [0,1,2,4]", ge=0),
        "classifier_scale": Key(float | int | list | None, "classifier guidance scale s, or a "
                                "list to sweep", ge=0),
        "samples": Key(str | None, "evaluate these images (folder or .npz)", nonempty=True),
        "n": Key(int | None, "generated images per seed set (default 50000)", ge=2),
        "repeats": Key(int, "seed sets", ge=1),
        "clip_denoised": Key(bool, "clip the predicted x0 to [-1, 1]"),
        "precision": Key(str | int, "32 | bf16 (CUDA only)", choices=("32", "bf16")),
        "ref": Key(str | None, "real images: a folder or a .npz", nonempty=True),
        "ref_split": Key(str | None, "split of the run's dataset", nonempty=True),
        "ref_root": Key(str | None, "overrides the run's dataset.root", nonempty=True),
        "ref_n": Key(int | None, "use the first ref_n reference images", ge=2),
        "metrics": Key(list, "any of fid, isc, kid, prc"),
        "extractor": Key(str, "inception-v3-compat | standin", nonempty=True),
        "weights": Key(str | None, "Inception weights file", nonempty=True),
        "download_weights": Key(bool, "fetch missing Inception weights"),
        "cache": Key(bool, "cache the reference statistics"),
        "cache_dir": Key(str | None, "where reference statistics are cached", nonempty=True),
        "out": Key(str | None, "the JSON file", nonempty=True),
        "overwrite": Key(bool, "replace an earlier result file instead of writing <name>_2.json"),
        "batch_size": Key(int, "images per sampling / feature batch", ge=1),
        "num_workers": Key(int, "DataLoader workers decoding reference images", ge=0),
    },
    "eval_nll": {
        **COMMON_SAMPLING,
        "steps": Key(int | None, "vlb: terms, one per geometric stratum of t; null: all T",
                     ge=1),
        "method": Key(str, "vlb | ode | both", choices=("vlb", "ode", "both")),
        "n": Key(int, "items of the data evaluated", ge=1),
        "split": Key(str | None, "the run's dataset split", nonempty=True),
        "root": Key(str | None, "overrides the run's dataset.root", nonempty=True),
        "batch_size": Key(int, "items per batch", ge=1),
        "variance": Key(str, "auto | learned | beta | beta_tilde",
                        choices=("auto", "learned", "beta", "beta_tilde")),
        "decoder": Key(str, "auto | discrete | continuous",
                       choices=("auto", "discrete", "continuous")),
        "rtol": Key(float, "the ODE solver's relative tolerance", ge=1e-12, le=1),
        "atol": Key(float, "the ODE solver's absolute tolerance", ge=1e-12, le=1),
        "probes": Key(int, "Hutchinson probes per item", ge=1),
        "seed": Key(int, "noise of the terms, dequantization and probes", ge=0, le=2**63 - 1),
        "out": Key(str | None, "the JSON file", nonempty=True),
        "overwrite": Key(bool, "replace an earlier result file instead of writing <name>_2.json"),
    },
    "noise_viz": {
        **COMMON_SAMPLING,
        **GUIDANCE,
        "guidance": Key(float | int | None, "classifier-free guidance scale w of the guided "
                        "reverse process", ge=0),
        "schedules": Key(list | str, "rows: names of conf/schedule options"),
        "num_timesteps": Key(int, "T of every schedule drawn", ge=2),
        "timesteps": Key(list | int | None, "columns (0..T-1)"),
        "image": Key(str | list | None, "png/jpg file(s) instead of dataset images"),
        "image_size": Key(int, "images are resized to this", ge=1, le=4096),
        "num_images": Key(int, "images noised / reverse samples drawn", ge=1, le=64),
        "indices": Key(list | int | None, "which dataset images"),
        "seed": Key(int, "seeds the noise and the samples", ge=0),
        "gif": Key(bool, "also write GIFs"),
        "gif_frames": Key(int, "frames of forward.gif", ge=2, le=1000),
        "reverse": Key(bool, "draw the newest run's reverse process"),
        "reverse_columns": Key(int, "sampler steps shown in reverse.png", ge=1),
    },
}

TRAINER: dict[str, Key] = {  # ranges Lightning checks late, or not at all
    "max_steps": Key(int, "optimizer steps (-1: no limit)", ge=-1),
    "max_time": Key(str | None, "wall-clock budget DD:HH:MM:SS, e.g. 00:00:15:00",
                    pattern=r"\d+:\d{1,2}:\d{1,2}:\d{1,2}"),
    "min_steps": Key(int | None, "at least this many steps", ge=0),
    "max_epochs": Key(int | None, "epochs (-1: no limit)", ge=-1),
    "accumulate_grad_batches": Key(int, "micro-batches per optimizer step", ge=1),
    "gradient_clip_val": Key(float | int | None, "clip the gradient norm", ge=0),
    "log_every_n_steps": Key(int, "steps between logged values", ge=1),
    "num_nodes": Key(int, "machines", ge=1),
    "accelerator": Key(str, "auto | cpu | gpu | cuda | mps",
                       choices=("auto", "cpu", "gpu", "cuda", "mps")),
    "precision": Key(str | int, "32 | 16-mixed | bf16-mixed | 64 | bf16-true | 16-true",
                     choices=("32", "32-true", "16-mixed", "bf16-mixed", "64", "64-true",
                              "16-true", "bf16-true", "transformer-engine")),
}

# keys that moved into config groups with the redesign: a hint instead of "not in struct"
MOVED = {
    "lr": "optimizer.lr", "warmup_steps": "lr_scheduler.warmup_steps",
    "prediction": "module.prediction", "ema_decay": "module.ema_decay",
    "ema_warmup": "module.ema_warmup", "min_snr_gamma": "module.min_snr_gamma",
    "compile": "module.compile", "channels_last": "module.channels_last",
    "checkpoint_every": "callbacks.last.every_n_steps",
    "keep_checkpoint_every": "callbacks.snapshot.every_n_steps",
    "sample_every": "callbacks.preview.every_n_steps",
    "fid_every": "callbacks.fid_proxy.every_n_steps",
    "fid_samples": "callbacks.fid_proxy.num_samples",
    "fid_extractor": "callbacks.fid_proxy.extractor",
    "fid_weights": "callbacks.fid_proxy.weights", "fid_steps": "callbacks.fid_proxy.sampler.steps",
}


def nearest(name: str, candidates: list[str]) -> str:
    """" (did you mean X?)" for the closest candidate, or ""."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def check_top_level(command: str, cfg: Mapping[str, Any], groups: set[str]) -> None:
    """Check every top-level key of ``command`` against its schema (groups are skipped)."""
    schema = SCHEMAS.get(command, {})
    for name, value in cfg.items():
        if name in groups or name == "hydra":
            continue
        key = schema.get(name)
        if key is None:
            raise UsageError(f"unknown key {name}{nearest(name, sorted(schema))}")
        key.check(name, value)


def unknown_key_hint(command: str, key: str) -> str:
    """For a Hydra "Key 'x' is not in struct" error: where the key went, or the closest."""
    top = key.split(".")[0]
    if key in MOVED and command == "train":
        return f"{key} is now {MOVED[key]}"
    if "." in key:
        return f"unknown key {key}"
    return f"unknown key {key}{nearest(top, sorted(SCHEMAS.get(command, {})))}"


FLAG_ALIASES = {  # --options users bring from other tools -> the key that does that here
    "cfg_scale": "guidance", "guidance_scale": "guidance", "num_inference_steps": "steps",
    "num_samples": "n", "num_images": "n", "output_dir": "out", "output": "out",
    "checkpoint": "ckpt", "resume_from_checkpoint": "ckpt_path", "lr": "optimizer.lr",
    "learning_rate": "optimizer.lr", "max_steps": "trainer.max_steps",
}


def flag_hint(command: str, flag: str) -> str:
    """For an unknown ``--flag[=value]``: the override that does it for ``command``
    (``--cfg-scale=3`` -> ``guidance=3``), or "" when none is close."""
    name, _, value = flag.lstrip("-").partition("=")
    name = name.replace("-", "_")
    schema = sorted(SCHEMAS.get(command, {}))
    key = name if name in schema else FLAG_ALIASES.get(name)
    if key is None or key.split(".")[0] not in (*schema, "optimizer", "trainer"):
        close = difflib.get_close_matches(name, schema, n=1, cutoff=0.75)
        key = close[0] if close else None
    if key is None or (command != "train" and key.split(".")[0] in ("optimizer", "trainer")):
        return ""
    return f"; did you mean {key}={value or '...'}?"


def trainer_keys() -> list[str]:
    """The keyword arguments of ``lightning.Trainer`` (what ``trainer.X`` may be)."""
    import inspect

    import lightning as L

    return [k for k in inspect.signature(L.Trainer).parameters if k not in ("self",)]
