"""``diffcli ema``: the EMA of any width, rebuilt after training from the run's power-EMA
snapshots (Karras et al. 2024, EDM2, Sec. 3.2, App. C.3), written as a checkpoint every
command takes.

The run must have kept snapshots (``diffcli train callbacks.phema.every_n_steps=N``,
:mod:`diffcli.lit.phema`). For each wanted ``sigma_rel`` the snapshots taken at or before
``step`` (default: the last one) are combined with the least-squares weights of
:func:`diffcli.lit.posthoc_ema.solve_weights`, and the result replaces the EMA weights
(``ema_net.*``; the trained weights ``net.*`` of a run without an EMA copy get one) of the run's
checkpoint in ``<run dir>/checkpoints/ema-<sigma_rel>.ckpt`` (atomically). ``diffcli sample
ckpt=<that file>``, ``eval-fid``, ``export`` and ``diffcli.load`` then use it as any
checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from diffcli.checkpoint import LoadedRun, atomic_torch_save
from diffcli.errors import DiffcliError
from diffcli.lit.ema import gamma_of_sigma_rel
from diffcli.lit.phema import Snapshot, read_snapshots, snapshot_dir
from diffcli.lit.posthoc_ema import reconstruct, solve_weights
from diffcli.runs import run_dir_of

console = Console(stderr=True, soft_wrap=True)

__all__ = ["Rebuilt", "rebuild", "snapshots_of"]


@dataclass(frozen=True)
class Rebuilt:
    """One rebuilt EMA: its width, the step it is of, the file written, and the largest
    absolute weight of the combination (large weights amplify noise; EDM2 App. C.3)."""

    sigma_rel: float
    step: int
    path: Path
    max_weight: float


def snapshots_of(run: LoadedRun, step: int | None = None) -> tuple[list[Snapshot], int]:
    """The run's snapshots usable for ``step`` (default: the last snapshot's step) and that
    step; DiffcliError (one line) when there are none."""
    run_dir = run_dir_of(run.path)
    snaps = read_snapshots(run_dir)
    if not snaps:
        raise DiffcliError(f"{run_dir} kept no EMA snapshots ({snapshot_dir(run_dir)}/ is "
                           "empty or missing): train with callbacks.phema.every_n_steps=N")
    target = snaps[-1].step if step is None else int(step)
    usable = [s for s in snaps if s.step <= target]
    if not usable:
        raise DiffcliError(f"no EMA snapshot at or before step {target} (the first is at step "
                           f"{snaps[0].step})")
    return usable, target


def _weights_key(run: LoadedRun) -> str:
    return "ema_net." if any(k.startswith("ema_net.") for k in run.state_dict) else "net."


def rebuild_one(run: LoadedRun, snaps: Sequence[Snapshot], step: int, sigma_rel: float,
                out: Path) -> Rebuilt:
    """Write the checkpoint of the EMA of width ``sigma_rel`` at ``step`` to ``out``."""
    pairs = [(s, w) for s in snaps for w in s.widths]
    x = solve_weights([float(s.step) for s, _ in pairs], [gamma_of_sigma_rel(w) for _, w in pairs],
                      float(step), sigma_rel)
    ema = reconstruct((s.ema(w) for s, w in pairs), x)
    prefix = _weights_key(run)
    state = dict(run.state_dict)
    for name, value in ema.items():
        key = prefix + name
        if key not in state or state[key].shape != value.shape:
            raise DiffcliError(f"the EMA snapshots do not fit this run's network (at {name}): "
                               "they are of another run")
        state[key] = value.to(state[key].dtype)
    raw = dict(run.raw or {})
    raw["state_dict"] = state
    raw["posthoc_ema"] = {"sigma_rel": sigma_rel, "step": step,
                          "snapshots": [f"{s.path.name}@{w:g}" for s, w in pairs],
                          "weights": x.tolist()}
    atomic_torch_save(raw, out)
    return Rebuilt(sigma_rel, step, out, float(x.abs().max()))


def rebuild(run: LoadedRun, sigma_rels: Sequence[float], step: int | None = None,
            out_dir: Path | None = None) -> list[Rebuilt]:
    """The EMA of each width in ``sigma_rels`` at ``step`` (module docstring), one checkpoint
    each in ``out_dir`` (default ``<run dir>/checkpoints``)."""
    snaps, target = snapshots_of(run, step)
    for width in sigma_rels:
        gamma_of_sigma_rel(float(width))  # a bad width fails before anything is written
    folder = out_dir or run_dir_of(run.path) / "checkpoints"
    done = []
    for width in sigma_rels:
        path = folder / f"ema-{float(width):.3f}-step{target}.ckpt"
        done.append(rebuild_one(run, snaps, target, float(width), path))
        console.print(f"[green]wrote[/] {path} (sigma_rel {float(width):g} at step {target}, "
                      f"from {len(snaps)} snapshot files; largest weight "
                      f"{done[-1].max_weight:.2f})")
    if len(done) > 1:  # compare the widths: one eval-fid grid (a table, a plot)
        console.print("next: diffcli eval-fid ckpt=[" + ",".join(str(d.path) for d in done)
                      + "]", markup=False, highlight=False)
    else:
        console.print(f"next: diffcli sample ckpt={done[-1].path}")
    return done
