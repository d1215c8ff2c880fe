"""Typed schemas of the commands' top-level keys, checked before any work starts.

The config groups are checked by their components' own signatures (names and types, through
:func:`diffcli.components.check_kwargs`) and built cheaply where that is possible; the
top-level keys of each command have a :class:`Key` each (the command's ``keys``; the shared
ones are here): a type, a range or choices, and
the one-line meaning that ``diffcli <command> --help`` shows. A bad value is one
:class:`UsageError` line that names the key, the value and what would be accepted (exit 2).
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from collections.abc import Collection, Mapping
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
    if origin is dict:
        return names[dict]
    if origin is typing.Literal:
        return " or ".join(str(a) for a in typing.get_args(hint))
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
    "guide": Key(str | None, "autoguidance: a weaker run or checkpoint of the same data, "
                 "objective and classes; guidance= is its scale", nonempty=True),
}

def nearest(name: str, candidates: list[str]) -> str:
    """" (did you mean X?)" for the closest candidate, or ""."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def check_top_level(schema: Mapping[str, Key], cfg: Mapping[str, Any], groups: set[str]) -> None:
    """Check every top-level key against a command's ``schema`` (groups are skipped)."""
    for name, value in cfg.items():
        if name in groups or name == "hydra":
            continue
        key = schema.get(name)
        if key is None:
            raise UsageError(f"unknown key {name}{nearest(name, sorted(schema))}")
        key.check(name, value)


def unknown_key_hint(names: Collection[str], moved: Mapping[str, str], key: str) -> str:
    """For a Hydra "Key 'x' is not in struct" error: where the key went (``moved``: old key ->
    new one), or the closest of a command's key and group ``names``."""
    top = key.split(".")[0]
    if key in moved:
        return f"{key} is now {moved[key]}"
    if "." in key:
        return f"unknown key {key}"
    return f"unknown key {key}{nearest(top, sorted(names))}"


FLAG_ALIASES = {  # --options users bring from other tools -> the key that does that here
    "cfg_scale": "guidance", "guidance_scale": "guidance", "num_inference_steps": "steps",
    "num_samples": "n", "num_images": "n", "output_dir": "out", "output": "out",
    "checkpoint": "ckpt", "resume_from_checkpoint": "ckpt_path", "lr": "optimizer.lr",
    "learning_rate": "optimizer.lr", "max_steps": "trainer.max_steps",
}


def flag_hint(keys: Mapping[str, Key], groups: Collection[str], flag: str) -> str:
    """For an unknown ``--flag[=value]``: the override that does it for a command with top-level
    ``keys`` and config ``groups`` (``--cfg-scale=3`` -> ``guidance=3``), or "" when none is
    close."""
    name, _, value = flag.lstrip("-").partition("=")
    name = name.replace("-", "_")
    schema = sorted(keys)
    key = name if name in schema else FLAG_ALIASES.get(name)
    if key is None or key.split(".")[0] not in (*schema, "optimizer", "trainer"):
        close = difflib.get_close_matches(name, schema, n=1, cutoff=0.75)
        key = close[0] if close else None
    if key is None or (key.split(".")[0] in ("optimizer", "trainer")
                       and key.split(".")[0] not in groups):
        return ""
    return f"; did you mean {key}={value or '...'}?"
