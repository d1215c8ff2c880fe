"""Sample quality against the number of network evaluations (NFE), with an exact network.

The network is the closed-form ideal denoiser of the 2-D Gaussian mixture
:func:`diffcli.diffusion.gaussian.two_d_mixture` (8 modes of std 0.1 on a circle of radius 2,
unequal weights), so every error in the table is the sampler's discretization error plus
sampling noise. Each cell is the sliced 2-Wasserstein distance (256 random directions, the same
for every cell) between ``--n`` samples (default 10,000) and ``--n`` exact draws from the
mixture; the noise floor printed above the table is that distance between two independent sets
of exact draws. All samplers start from the same x_T noise, in float64 on the CPU.

Rows: DDPM (Ho et al. 2020), DDIM (Song et al. 2021), DPM-Solver++(2M), (3M) and (2M SDE)
(Lu et al. 2022), Euler and Heun on the Karras sigma grid (Karras et al. 2022), UniPC (Zhao et
al. 2023) and Restart (Xu et al. 2023; one restart cycle of two Heun steps, K = 1, so that it
fits small budgets: the most main-pass steps whose 2N - 1 + 4 evaluations fit the NFE, the
actual NFE in parentheses when it differs); some of them again with another grid or variant,
rows "name (option)" (``VARIANT_ROWS``): DPM-Solver++(2M), (3M) and UniPC on the
uniform-logSNR grid, UniPC on Karras', and UniPC with B1(h) = h (orders 2 and 3), the variant
Zhao et al. recommend for unconditional sampling; and, when ``diffusers`` is importable, its
schedulers as peer rows, each stepping the same network over ``trained_betas`` = our betas
with ``timestep_spacing="trailing"`` like our samplers: ``DDIMScheduler``
(``clip_sample=False``: the data leave [-1, 1]),
``DPMSolverMultistepScheduler`` as dpmsolver++ order 2 and order 3 (3M) and as sde-dpmsolver++
order 2 (2M SDE, also with ``use_karras_sigmas=True``), ``UniPCMultistepScheduler`` bh2
(``predict_x0=True``, ``solver_order=2``, corrector on: its default; also with
``use_karras_sigmas=True``), ``DEISMultistepScheduler`` order 3 and
``EulerAncestralDiscreteScheduler``. The loop is x = noise * ``init_noise_sigma``, then per
timestep t: out = net(``scale_model_input(x, t)``, t), x = ``step(out, t, x).prev_sample``
(``scale_model_input`` is the identity except for Euler ancestral, which steps on
x / sqrt(alpha_bar)). The stochastic rows (2M SDE, Euler ancestral) get a fresh
``torch.Generator`` seeded 4 at every cell, passed to every ``step(..., generator=g)``, so they
are reproducible. With ``use_karras_sigmas=True`` diffusers ignores ``timestep_spacing`` (it is
passed but unused: the sigmas are Karras' rho = 7 grid between our sigma_max and sigma_min) and
calls the network at the nearest integer timestep of each Karras sigma, as in its pipelines.
All rows run in float64 (noise and network output; each scheduler still upcasts/downcasts
internally, see below): in diffusers 0.42 none of them, UniPC included, fails or gives NaN in
float64 here, and float32 inputs (``diffusers_run(..., dtype=torch.float32)``) give the same
cells to 4 decimals (checked at NFE 5-50, linear schedule, eps, n = 2,000), except Euler
ancestral, whose noise draws differ with the dtype. Euler ancestral on the trailing grid is
DDPM's ancestral step in sigma coordinates, with the same seeded draws, so it reproduces the
ddpm row (to ~1e-4 per sample). A cell that ends with NaN or inf samples reads "NaN". Heun
spends 2N - 1 evaluations on N steps, so it runs (NFE + 1) // 2 steps and its cells give the
actual NFE in parentheses.

Every sampler steps on its own default grid (trailing timesteps; Karras sigmas for Euler and
Heun); ``--grid karras`` (or ``logsnr``, ``leading``, ...) puts all of ours on that grid instead
(``sampler.grid``), rows that cannot take it (DDPM off the training timesteps) reading "n/a".

Run: ``python -m benchmarks run sampler_nfe`` (the pinned preset below: linear schedule, eps,
n = 10,000, each sampler's own grid; writes docs/results/sampler_nfe.json and the tables in
docs/samplers.md). The preset needs ``diffusers`` (the ``bench`` extra) and refuses to run
without it, so a result never lacks the peer rows; the smoke run skips them when it is missing
and says so in its result. To explore other settings (not published):
``python benchmarks/sampler_nfe.py [--schedule cosine] [--prediction v] [--n 10000]
[--grid karras]``.
With n = 10,000 it takes about 3 minutes on 2 CPU cores with the 28 rows (192 s;
a row is ~1,200 network calls of 4-15 ms each, depending on the load), and the time
grows linearly with n, while the noise floor shrinks only like n^(-1/4) (it is dominated by the
scatter of the mode weights).
The diffusers schedulers compute in float32, so they agree with ours to ~1e-5, not 1e-12.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import time
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks.core import Benchmark, digest  # noqa: E402
from diffcli.diffusion.gaussian import IdealNetwork, two_d_mixture  # noqa: E402
from diffcli.diffusion.process import Parameterization  # noqa: E402
from diffcli.diffusion.samplers import (  # noqa: E402
    DDIM,
    DDPM,
    Denoiser,
    DPMSolverPP2M,
    DPMSolverPP2MSDE,
    DPMSolverPP3M,
    Euler,
    GridKind,
    Heun,
    Restart,
    Sampler,
    UniPC,
)
from diffcli.diffusion.schedules import NoiseSchedule, make_schedule  # noqa: E402
from diffcli.eval.distances import sliced_wasserstein  # noqa: E402

OURS: dict[str, Callable[..., Sampler]] = {
    "ddpm": DDPM, "ddim": DDIM, "dpmpp_2m": DPMSolverPP2M, "dpmpp_3m": DPMSolverPP3M,
    "dpmpp_2m_sde": DPMSolverPP2MSDE, "euler": Euler, "heun": Heun,
    "unipc": UniPC, "restart": Restart,
}
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
NO_DIFFUSERS = ("sampler_nfe's preset compares with diffusers' schedulers and diffusers is not "
                "installed: pip install 'diffcli[bench]'")
# (B, 2) noise, number of steps -> (B, 2) samples
Run = Callable[[Tensor, int], Tensor]

# The pinned settings: every row (sampler and options), budget, seed and size of the table.
PRESET: dict[str, Any] = {
    "schedule": "linear", "prediction": "eps", "n": 10_000, "directions": 256,
    "nfes": [5, 10, 20, 50, 100, 1000],
    "grid": None,  # None: each sampler on its own default grid
    # truth: the exact draws; floor: the second set of exact draws; noise: x_T; sampler: the
    # generator of the stochastic rows (fresh at every cell); directions: sliced W2's
    "seeds": {"truth": 1, "floor": 2, "noise": 3, "sampler": 4, "directions": 0},
    "ours": list(OURS),
    # options every row of that sampler gets: Restart with one cycle of two Heun steps
    # (4 extra evaluations), so that it fits NFE 5
    "options": {"restart": {"restart_k": 1, "restart_steps": 2}},
    # our samplers again with another grid or variant than their default: row -> [sampler, options]
    "variants": {
        "dpmpp_2m (logsnr)": ["dpmpp_2m", {"grid": "logsnr"}],
        "dpmpp_2m (karras)": ["dpmpp_2m", {"grid": "karras"}],
        "dpmpp_3m (logsnr)": ["dpmpp_3m", {"grid": "logsnr"}],  # the default of diffcli sample
        "unipc (logsnr)": ["unipc", {"grid": "logsnr"}],
        "unipc (karras)": ["unipc", {"grid": "karras"}],
        "unipc (bh1)": ["unipc", {"variant": "bh1"}],  # Zhao et al.'s choice unconditionally
        "unipc (order 3, bh1)": ["unipc", {"order": 3, "variant": "bh1"}],
    },
    # diffusers' schedulers as peer rows (row "diffusers NAME"): [class, constructor options];
    # "seed": the stochastic ones get a fresh generator seeded so at every cell
    "diffusers": {
        "DDIMScheduler": ["DDIMScheduler", {"clip_sample": False}],
        "DPMSolverMultistep": ["DPMSolverMultistepScheduler",
                               {"algorithm_type": "dpmsolver++", "solver_order": 2}],
        "DPMSolverMultistep 3M": ["DPMSolverMultistepScheduler",
                                  {"algorithm_type": "dpmsolver++", "solver_order": 3}],
        "DPMSolverMultistep 2M SDE": ["DPMSolverMultistepScheduler", {
            "algorithm_type": "sde-dpmsolver++", "solver_order": 2, "seed": 4}],
        "DPMSolverMultistep 2M SDE karras": ["DPMSolverMultistepScheduler", {
            "algorithm_type": "sde-dpmsolver++", "solver_order": 2, "seed": 4,
            "use_karras_sigmas": True}],
        "UniPCMultistep bh2": ["UniPCMultistepScheduler",
                               {"solver_type": "bh2", "predict_x0": True, "solver_order": 2}],
        "UniPCMultistep bh2 karras": ["UniPCMultistepScheduler", {
            "solver_type": "bh2", "predict_x0": True, "solver_order": 2,
            "use_karras_sigmas": True}],
        "DEISMultistep 3": ["DEISMultistepScheduler", {"solver_order": 3}],
        "EulerAncestralDiscrete": ["EulerAncestralDiscreteScheduler", {"seed": 4}],
    },
    "require_diffusers": True,  # the run refuses without diffusers (no silently missing rows)
}
# the smoke run: every row, two budgets, 200 samples; the diffusers rows only when installed
SMOKE: dict[str, Any] = {"n": 200, "nfes": [5, 10], "require_diffusers": False}


def our_sampler(name: str, settings: Mapping[str, Any], **options: Any) -> Callable[..., Sampler]:
    """Sampler ``name``'s class with the preset's options for it and ``options`` bound."""
    cls, bound = OURS[name], {**settings.get("options", {}).get(name, {}), **options}
    return lambda **kw: cls(**bound, **kw)


def steps_for(make: Callable[..., Sampler], name: str, nfe: int,
              schedule: NoiseSchedule) -> tuple[int, int]:
    """(steps, actual NFE) for a budget of ``nfe`` evaluations: Heun uses 2N - 1 per N steps,
    Restart 2N - 1 plus its restart cycle's (when the grid reaches its interval): the most
    steps that fit."""
    if name == "heun":
        steps = (nfe + 1) // 2
        return steps, 2 * steps - 1
    if name == "restart":
        for steps in range((nfe + 1) // 2, 0, -1):
            actual = make(steps=steps).nfe(schedule)
            if actual <= nfe:
                return steps, actual
        return 1, make(steps=1).nfe(schedule)
    return nfe, nfe


def our_run(make: Callable[..., Sampler], den: Denoiser, seed: int) -> Run:
    """A diffcli sampler with ``steps`` steps; stochastic ones draw from a fresh seeded
    generator, so every cell sees the same noise."""
    def run(noise: Tensor, steps: int) -> Tensor:
        return make(steps=steps).sample(den, noise, generator=torch.Generator().manual_seed(seed))
    return run


def diffusers_run(scheduler_cls: Any, net: IdealNetwork, prediction: str,
                  dtype: torch.dtype = torch.float64, seed: int | None = None,
                  **extra: Any) -> Run:
    """A diffusers scheduler driven by ``net``: x <- step(net(scale_model_input(x, t), t), t,
    x).prev_sample over ``set_timesteps(steps)``, from x_T = noise * init_noise_sigma (1 for the
    VP schedulers; the Euler ones work on x / sqrt(alpha_bar) and ``scale_model_input`` maps it
    back to x_t, the identity for the others). The noise and the network output are cast to
    ``dtype`` (the samples come back in float64); a ``seed`` makes the scheduler stochastic: a
    fresh seeded generator goes to every ``step``, so every cell sees the same noise."""
    def run(noise: Tensor, steps: int) -> Tensor:
        sched = scheduler_cls(num_train_timesteps=net.schedule.num_timesteps,
                              trained_betas=net.schedule.betas.numpy(),
                              prediction_type=DIFFUSERS_PREDICTION[prediction],
                              timestep_spacing="trailing", **extra)
        sched.set_timesteps(steps)
        options = {} if seed is None else {"generator": torch.Generator().manual_seed(seed)}
        x = noise.to(dtype) * sched.init_noise_sigma
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t).to(torch.float64)
            out = net(x_in, torch.full((x.shape[0],), int(t), dtype=torch.long)).to(dtype)
            x = sched.step(out, t, x, **options).prev_sample
        return x.to(torch.float64)
    return run


def have_diffusers() -> bool:
    return importlib.util.find_spec("diffusers") is not None


def our_rows(settings: Mapping[str, Any]) -> dict[str, tuple[str, Callable[..., Sampler]]]:
    """Row name -> (sampler name, its class with the row's options bound): every sampler of
    ``ours`` (on ``grid`` when one is given, else its own), then the variant rows."""
    grid = settings.get("grid")
    suffix, on = ("", {}) if grid is None else (f" ({grid})", {"grid": grid})
    out = {name + suffix: (name, our_sampler(name, settings, **on)) for name in settings["ours"]}
    if grid is None:
        out.update({row: (name, our_sampler(name, settings, **options))
                    for row, (name, options) in settings["variants"].items()})
    return out


def rows(net: IdealNetwork, settings: Mapping[str, Any]) -> dict[str, tuple[str, Any, Run]]:
    """Every row to measure: name -> (sampler name for the NFE rule, its class or None, run);
    the diffusers rows when ``diffusers`` is importable and our samplers are on their own
    grids."""
    den = Denoiser(net, net.schedule, settings["prediction"])
    seed = settings["seeds"]["sampler"]
    out = {row: (name, make, our_run(make, den, seed))
           for row, (name, make) in our_rows(settings).items()}
    if settings.get("grid") is None and have_diffusers():
        import diffusers

        for row, (cls, extra) in settings["diffusers"].items():
            out["diffusers " + row] = (row, None, diffusers_run(
                getattr(diffusers, cls), net, settings["prediction"], **extra))
    return out


def cell(make: Callable[..., Sampler] | None, name: str, run: Run, nfe: int, noise: Tensor,
         truth: Tensor, schedule: NoiseSchedule, directions: int,
         seed: int) -> tuple[str, float]:
    """(the table entry, seconds spent sampling) for one sampler at one NFE budget."""
    steps, actual = (nfe, nfe) if make is None else steps_for(make, name, nfe, schedule)
    if not 1 <= steps <= schedule.num_timesteps:
        return "n/a", 0.0
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            x = run(noise, steps)
    except ValueError:  # a grid this sampler cannot step on
        return "n/a", 0.0
    seconds = time.perf_counter() - t0
    distance = sliced_wasserstein(x, truth, directions, torch.Generator().manual_seed(seed))
    text = f"{distance:.4f}" if math.isfinite(distance) else "NaN"  # NaN/inf samples
    return (text if actual == nfe else f"{text} ({actual})"), seconds


def exact_draws(settings: Mapping[str, Any]) -> tuple[Tensor, float, Tensor]:
    """(``n`` exact draws of the mixture, the noise floor: sliced W2 between them and a second
    set of exact draws, the x_T noise (n, 2) float64), from the settings' seeds; the floor is
    printed."""
    seeds, n, directions = settings["seeds"], settings["n"], settings["directions"]
    data = two_d_mixture()
    truth = data.sample(n, torch.Generator().manual_seed(seeds["truth"]))
    floor = sliced_wasserstein(truth, data.sample(n, torch.Generator().manual_seed(
        seeds["floor"])), directions, torch.Generator().manual_seed(seeds["directions"]))
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seeds["noise"]),
                        dtype=torch.float64)
    print(f"noise floor (two independent true samples): {floor:.4f}", flush=True)
    return truth, floor, noise


def measure(settings: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """Every row's sliced W2 at every NFE budget of ``settings``, and the noise floor. Refuses
    (one line, exit 1) when ``require_diffusers`` and diffusers is missing; without that
    requirement the peer rows are skipped and the result says so."""
    if settings.get("grid") is None and not have_diffusers() and settings["require_diffusers"]:
        raise SystemExit(f"error: {NO_DIFFUSERS}")
    seeds, n, directions = settings["seeds"], settings["n"], settings["directions"]
    schedule = make_schedule(settings["schedule"])
    net = IdealNetwork(two_d_mixture(), schedule, Parameterization(settings["prediction"]))
    truth, floor, noise = exact_draws(settings)
    out = []
    for row, (name, make, run) in rows(net, settings).items():
        cells = [cell(make, name, run, nfe, noise, truth, schedule, directions,
                      seeds["directions"]) for nfe in settings["nfes"]]
        out.append({"sampler": row, "peer": make is None, "cells": [c for c, _ in cells],
                    "seconds": [round(s, 3) for _, s in cells]})
        print(f"  {row}: {' '.join(out[-1]['cells'])}", flush=True)
    if settings.get("grid") is not None:
        peers = "not run: our samplers are on one grid (grid=...)"
    elif have_diffusers():
        import diffusers
        peers = diffusers.__version__
    else:
        peers = "skipped: diffusers is not installed (pip install 'diffcli[bench]')"
    return {"floor": floor, "diffusers": peers, "nfes": list(settings["nfes"]), "n": n,
            "rows": out}


def value(text: str) -> float:
    """The sliced W2 of a cell's text ("0.0811 (19)" -> 0.0811; "n/a", "NaN" -> inf)."""
    head = text.split(" ")[0]
    return float(head) if head not in ("n/a", "NaN") else math.inf


def nfe_table(result: Mapping[str, Any]) -> str:
    """The floor and versions, then a markdown table: one row per sampler, one column per
    NFE."""
    peers = result["diffusers"]
    note = (f"diffusers {peers}" if peers[:1].isdigit() else f"diffusers rows {peers}")
    lines = [f"Noise floor (two independent sets of {result['n']:,} exact draws): "
             f"**{result['floor']:.4f}**; {note}.", "",
             "| sliced W2 | " + " | ".join(f"NFE {n}" for n in result["nfes"]) + " |",
             "| --- " * (len(result["nfes"]) + 1) + "|"]
    lines += [f"| {r['sampler']} | " + " | ".join(r["cells"]) + " |" for r in result["rows"]]
    return "\n".join(lines)


def best_table(result: Mapping[str, Any]) -> str:
    """At each NFE budget, the best diffcli row against the best diffusers row."""
    def best(rows: list, i: int) -> str:
        if not rows:
            return "- | -"
        top = min(rows, key=lambda r: value(r["cells"][i]))
        return f"{top['sampler']} | {top['cells'][i]}"

    ours = [r for r in result["rows"] if not r["peer"]]
    peers = [r for r in result["rows"] if r["peer"]]
    lines = ["| NFE | best diffcli row | sliced W2 | best diffusers row | sliced W2 |",
             "| ---: | --- | ---: | --- | ---: |"]
    lines += [f"| {n} | {best(ours, i)} | {best(peers, i)} |"
              for i, n in enumerate(result["nfes"])]
    return "\n".join(lines)


def plain(value: Any) -> Any:
    """Enums as their values, tuples as lists (JSON-able settings)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def resolve(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings plus what they leave to diffcli's defaults: every field of every row's
    sampler, the schedule's betas (their hash) and the mixture."""
    samplers = {row: {k: plain(v) for k, v in dataclasses.asdict(make(steps=1)).items()
                      if k != "steps"}
                for row, (_, make) in our_rows(settings).items()}
    data, betas = two_d_mixture(), make_schedule(settings["schedule"]).betas
    return {**settings, "samplers": samplers,
            "schedule_betas": {"T": len(betas), "sha256": digest(betas.tolist())},
            "mixture": {"weights": data.weights.tolist(), "means": data.means.tolist(),
                        "stds": data.stds.tolist()}}


BENCHMARK = Benchmark(
    name="sampler_nfe", title="sliced W2 against NFE with the exact denoiser of a 2-D mixture",
    preset=PRESET, smoke=SMOKE, run=measure, resolve=resolve,
    tables={"nfe": nfe_table, "best": best_table})


def main() -> None:
    """Explore other settings (printed, not published): schedule, prediction, n, one grid."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schedule", default="linear", choices=["linear", "cosine", "sigmoid"])
    ap.add_argument("--prediction", default="eps", choices=[p.value for p in Parameterization])
    ap.add_argument("--n", type=int, default=10_000, help="samples per cell and true samples")
    ap.add_argument("--grid", default=None,
                    choices=[g.value for g in GridKind if g is not GridKind.CUSTOM],
                    help="step all our samplers on this grid (default: each one's own)")
    args = ap.parse_args()
    start = time.perf_counter()
    result = measure({**PRESET, "schedule": args.schedule, "prediction": args.prediction,
                      "n": args.n, "grid": args.grid, "require_diffusers": False}, Path("."))
    print("\n" + nfe_table(result) + "\n\n" + best_table(result))
    print(f"\ntotal runtime: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
