"""Every argument of ``lightning.Trainer`` as a ``trainer.X`` key: its type read from the
Trainer's signature (the kinds a config value can be: numbers, strings, booleans, lists,
Literal choices), with the ranges Lightning checks late or not at all (:data:`TRAINER`), and
the four arguments diffcli sets itself pointed to the keys that do the job here."""

from __future__ import annotations

import datetime
import functools
import inspect
import operator
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffcli.workflows.schemas import Key, UsageError, nearest

TRAINER: dict[str, Key] = {  # ranges Lightning checks late, or not at all
    "max_steps": Key(int, "optimizer steps (-1: no limit)", ge=-1),
    "max_time": Key(str | None, "wall-clock budget DD:HH:MM:SS, e.g. 00:00:15:00",
                    pattern=r"\d+:\d{1,2}:\d{1,2}:\d{1,2}"),
    "min_steps": Key(int | None, "at least this many steps", ge=0),
    "min_epochs": Key(int | None, "at least this many epochs", ge=0),
    "max_epochs": Key(int | None, "epochs (-1: no limit)", ge=-1),
    "accumulate_grad_batches": Key(int, "micro-batches per optimizer step", ge=1),
    "gradient_clip_val": Key(float | int | None, "clip the gradient norm", ge=0),
    "log_every_n_steps": Key(int | None, "steps between logged values", ge=1),
    "num_nodes": Key(int, "machines", ge=1),
    "overfit_batches": Key(int | float, "train on this many batches (or this fraction)", ge=0),
    "limit_train_batches": Key(int | float | None, "batches an epoch (a count, or a fraction "
                               "<= 1.0)", ge=0),
    "fast_dev_run": Key(bool | int, "a smoke test of N batches (true: 1) that saves nothing",
                        ge=0),
    "check_val_every_n_epoch": Key(int | None, "epochs between validations", ge=1),
    "num_sanity_val_steps": Key(int | None, "validation batches before training (-1: all)",
                                ge=-1),
    "reload_dataloaders_every_n_epochs": Key(int, "0: never", ge=0),
    "accelerator": Key(str, "auto | cpu | gpu | cuda | mps",
                       choices=("auto", "cpu", "gpu", "cuda", "mps")),
    "precision": Key(str | int | None, "32 | 16-mixed | bf16-mixed | 64 | bf16-true | 16-true",
                     choices=("16", "32", "32-true", "16-mixed", "bf16", "bf16-mixed", "64",
                              "64-true", "16-true", "bf16-true", "transformer-engine",
                              "transformer-engine-float16")),
}

SET_BY_DIFFCLI = {  # Trainer arguments diffcli passes itself: the key that does the job here
    "logger": "choose the logger with logger=csv|tensorboard|wandb|none",
    "callbacks": "configure callbacks with the callbacks group (callbacks.<name>.<key>=...)",
    "plugins": "diffcli passes its own (atomic checkpoints, SLURM); none can be added",
    "default_root_dir": "the run folder is runs_root=<folder> (or hydra.run.dir=<folder>)",
}

PLAIN = (int, float, bool, str, type(None))


def trainer_keys() -> list[str]:
    """The keyword arguments of ``lightning.Trainer`` (what ``trainer.X`` may be), read from
    Lightning's source where it is found (importing Lightning takes seconds, too long for
    shell completion), else from the imported class."""
    return _trainer_keys_in_source() or list(_signature())


def _trainer_keys_in_source() -> list[str]:
    """``Trainer.__init__``'s argument names, parsed (not imported) from
    ``lightning/pytorch/trainer/trainer.py``; empty where that file or function is not found."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("lightning")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            tree = ast.parse(Path(folder, "pytorch", "trainer", "trainer.py").read_text())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == "Trainer":
                for f in node.body:
                    if isinstance(f, ast.FunctionDef) and f.name == "__init__":
                        a = f.args
                        return [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)
                                if x.arg != "self"]
    return []


@functools.cache
def _signature() -> dict[str, Any]:
    """``lightning.Trainer``'s arguments -> their type hints (evaluated)."""
    import lightning as L

    hints = typing.get_type_hints(L.Trainer.__init__)
    return {k: hints.get(k, Any) for k in inspect.signature(L.Trainer).parameters}


def config_hint(hint: Any) -> Any:
    """The part of a type hint that a config value can be: ``Union[str, Accelerator]`` -> str,
    ``str | Path | None`` -> ``str | None``, ``timedelta`` dropped; None when no part can."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [p for p in (config_hint(a) for a in typing.get_args(hint)) if p is not None]
        return functools.reduce(operator.or_, parts) if parts else None
    if origin is typing.Literal or hint in PLAIN:
        return hint
    if origin in (list, dict) and all(config_hint(a) is not None for a in typing.get_args(hint)):
        return hint
    if inspect.isclass(hint) and issubclass(hint, Path):
        return str
    return None  # a class (Accelerator, Strategy, Callback, ...), timedelta, ...


@functools.cache
def trainer_schema() -> dict[str, Key]:
    """One :class:`Key` per Trainer argument a config can set: :data:`TRAINER`'s where it has
    one, else the type from the signature."""
    schema = {}
    for name, hint in _signature().items():
        if name in SET_BY_DIFFCLI:
            continue
        plain = config_hint(hint)
        if plain is datetime.timedelta or plain is None:
            continue
        schema[name] = TRAINER.get(name) or Key(plain)
    return schema


def check_trainer_arguments(trainer: Mapping[str, Any]) -> None:
    """Each ``trainer.X`` names a Trainer argument and has a value of its type and range
    (null: Lightning's default); :data:`SET_BY_DIFFCLI` ones say which key does the job."""
    schema = trainer_schema()
    for key, value in trainer.items():
        if key in SET_BY_DIFFCLI:
            raise UsageError(f"trainer.{key} is set by diffcli: {SET_BY_DIFFCLI[key]}")
        if key not in schema:
            raise UsageError(unknown_trainer_argument(key))
        if value is not None:
            schema[key].check(f"trainer.{key}", value)


def unknown_trainer_argument(name: str) -> str:
    """"trainer.X is not a Lightning Trainer argument (did you mean trainer.Y?)"."""
    close = nearest(name, trainer_keys()).replace("mean ", "mean trainer.")
    return f"trainer.{name} is not a Lightning Trainer argument{close}"


def lightning_arguments(trainer: Mapping[str, Any]) -> dict[str, Any]:
    """The ``trainer`` node as keyword arguments of ``lightning.Trainer``: a null for an
    argument that takes no None means Lightning's default and is left out."""
    hints = _signature()
    return {k: v for k, v in trainer.items()
            if v is not None or _takes_none(hints.get(k, Any))}


def _takes_none(hint: Any) -> bool:
    return hint is Any or type(None) in typing.get_args(hint)
