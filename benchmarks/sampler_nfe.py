"""Sample quality against the number of network evaluations (NFE), with exact networks; and the
table ``sampler=auto`` reads.

**The data and the networks.** The 2-D Gaussian mixture
:func:`diffcli.diffusion.gaussian.two_d_mixture` (8 modes of std 0.1 on a circle of radius 2,
unequal weights) under each objective: the DDPM chain (linear schedule, eps), EDM (Karras et al.
2022) and flow matching (linear path, Lipman et al. 2023), each network the closed-form minimiser
of its loss, so every error in the table is the sampler's.

**The metric, and why it can rank.** Each cell is MMD^2 (Gretton et al. 2012) between the
sampler's output and the exact probability-flow ODE solution from the same x_T noise (``n``
pairs; DPM-Solver++(3M) on ``reference_steps`` log-SNR steps to the objective's smallest noise
level, then its x0_hat, which is where every sampler's grid ends). The kernel is a Gaussian
kernel with bandwidths 0.05-1 in ``features`` random Fourier features
(:class:`diffcli.eval.distances.FourierKernel`), and the estimator is the coupled U-statistic
(:func:`diffcli.eval.distances.coupled_mmd`): unbiased, and its scatter shrinks with the
distance between each sample and its exact counterpart, so it has no floor of its own; the
earlier sliced W2 between two independent sample sets sat at a floor (0.048 at n = 10,000)
within 1-2x of every cell from 20 NFE on. Each cell has a standard error from 10 folds; the
"best" table ranks by MMD^2 + 2 standard errors and says at each NFE whether the best cell is
at least 5 standard errors above zero (ranked) or not. The stochastic samplers (DDPM, 2M SDE,
Euler ancestral) are not coupled to the ODE path, so their cells carry the O(1/n) scatter of
independent sets (standard errors about 1e-4 here), which the upper bound accounts for. How
far the reference itself lies from the mixture (its x_T
is N(0, I), not the exact marginal, and it stops at the smallest noise level) is printed as the
reference's MMD^2 to the mixture, with the closed-form mixture side
(:func:`diffcli.eval.distances.mmd_to_mixture`), beside the floor of that metric for exact
draws.

**Rows.** Ours (``candidates``: one network evaluation per step, the configurations
``sampler=auto`` may pick): DDIM, DPM-Solver++(2M), (3M) with and without
``lower_order_final``, (2M SDE), UniPC (bh2 order 2, bh1 order 3), each on the trailing,
log-SNR and Karras grids; and (``others``) DDPM, Euler, Heun and Restart (Heun spends up to
2N - 1 evaluations on N steps, Restart 2N - 1 + 4: the most steps that fit the NFE, the
actual NFE in parentheses when it differs). Peer rows (the DDPM chain only; ``diffusers``,
which the preset requires): diffusers' ``DPMSolverMultistepScheduler`` as dpmsolver++ order 2
(2M) and 3 (3M) and as sde-dpmsolver++ order 2 (2M SDE), and ``UniPCMultistepScheduler`` bh2
order 2, each on trailing timesteps, ``use_karras_sigmas`` and a uniform log-SNR grid
(``use_lu_lambdas``; UniPC has none, so ``use_exponential_sigmas``, uniform in log sigma, the
same grid), with ``lower_order_final`` on and off; ``DDIMScheduler``,
``DEISMultistepScheduler`` order 3 and ``EulerAncestralDiscreteScheduler`` on trailing
timesteps. Each steps the same network over ``trained_betas`` = our betas; the loop is x = noise
* ``init_noise_sigma``, then per timestep out = net(``scale_model_input(x, t)``, t), x =
``step(out, t, x).prev_sample``; stochastic rows get a fresh generator seeded 4 at every cell.
All rows run in float64 (diffusers' schedulers compute partly in float32 internally).

**The auto table.** ``diffcli/diffusion/samplers/auto_table.yaml`` is rendered from the result
(like the docs' tables) with the trained-model yardstick's results (``benchmarks/auto_pick.py``):
per objective and NFE, among the candidates within 5% of the best LeNet-FID where a trained
MNIST model measured that NFE (all candidates elsewhere), the one with the lowest MMD^2 + 2
standard errors (an upper bound: a noisy cell cannot win by its scatter).

Run: ``python -m benchmarks run sampler_nfe`` (writes docs/results/sampler_nfe.json, the tables
in docs/samplers.md and the auto table; needs ``diffusers``, the ``bench`` extra). Explore other
settings (printed, not published): ``python benchmarks/sampler_nfe.py [--n 2000]``.
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

from benchmarks.auto_pick import auto_table, best, pick, trained_scores  # noqa: E402
from benchmarks.core import Benchmark, digest, markdown_table  # noqa: E402
from diffcli.components import build  # noqa: E402
from diffcli.diffusion.gaussian import (  # noqa: E402
    IdealNetwork,
    IdealObjectiveNetwork,
    two_d_mixture,
)
from diffcli.diffusion.process import Parameterization  # noqa: E402
from diffcli.diffusion.samplers import (  # noqa: E402
    DDIM,
    DDPM,
    Denoiser,
    DPMSolverPP2M,
    DPMSolverPP2MSDE,
    DPMSolverPP3M,
    Euler,
    Heun,
    Restart,
    Sampler,
    UniPC,
)
from diffcli.diffusion.schedules import NoiseSchedule, make_schedule  # noqa: E402
from diffcli.eval.distances import FourierKernel, coupled_mmd, mmd_to_mixture  # noqa: E402

OURS: dict[str, Callable[..., Sampler]] = {
    "ddpm": DDPM, "ddim": DDIM, "dpmpp_2m": DPMSolverPP2M, "dpmpp_3m": DPMSolverPP3M,
    "dpmpp_2m_sde": DPMSolverPP2MSDE, "euler": Euler, "heun": Heun,
    "unipc": UniPC, "restart": Restart,
}
AUTO_TABLE = "diffcli/diffusion/samplers/auto_table.yaml"
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
NO_DIFFUSERS = ("sampler_nfe's preset compares with diffusers' schedulers and diffusers is not "
                "installed: pip install 'diffcli[bench]'")
Run = Callable[[Tensor, int], Tensor]  # (B, 2) noise, number of steps -> (B, 2) samples
GRIDS = ("trailing", "logsnr", "karras")


def _grid_rows(name: str, options: Mapping[str, Any], label: str = "") -> dict[str, list]:
    """``name (label, grid)`` -> [name, options + grid] for each of :data:`GRIDS`."""
    tag = f"{label}, " if label else ""
    return {f"{name} ({tag}{g})": [name, {**options, "grid": g}] for g in GRIDS}


def _diffusers_rows() -> dict[str, list]:
    """Each multistep solver of diffusers on each grid, lower_order_final on and off."""
    solvers = {
        "DPMSolverMultistep 2M": ["DPMSolverMultistepScheduler",
                                  {"algorithm_type": "dpmsolver++", "solver_order": 2}],
        "DPMSolverMultistep 3M": ["DPMSolverMultistepScheduler",
                                  {"algorithm_type": "dpmsolver++", "solver_order": 3}],
        "DPMSolverMultistep 2M SDE": ["DPMSolverMultistepScheduler", {
            "algorithm_type": "sde-dpmsolver++", "solver_order": 2, "seed": 4}],
        "UniPCMultistep bh2": ["UniPCMultistepScheduler",
                               {"solver_type": "bh2", "predict_x0": True, "solver_order": 2}],
    }
    grids = {"trailing": {}, "karras": {"use_karras_sigmas": True},
             "lu": {"use_lu_lambdas": True},  # uniform log-SNR: DPMSolverMultistep only
             "exponential": {"use_exponential_sigmas": True}}  # uniform log sigma: UniPC's
    out = {}
    for row, (cls, options) in solvers.items():
        logsnr = "exponential" if cls == "UniPCMultistepScheduler" else "lu"
        for grid in ("trailing", "karras", logsnr):
            extra = grids[grid]
            for lof in (True, False):
                tag = f"{grid}, lower_order_final {'on' if lof else 'off'}"
                out[f"{row} ({tag})"] = [cls, {**options, **extra, "lower_order_final": lof}]
    return {**out,
            "DDIMScheduler (trailing)": ["DDIMScheduler", {"clip_sample": False}],
            "DEISMultistep 3 (trailing)": ["DEISMultistepScheduler", {"solver_order": 3}],
            "EulerAncestralDiscrete (trailing)": ["EulerAncestralDiscreteScheduler", {"seed": 4}]}


# The pinned settings: every row (sampler and options), budget, seeds and size of the table.
PRESET: dict[str, Any] = {
    "n": 10_000, "features": 256, "bandwidths": [0.05, 0.1, 0.2, 0.5, 1.0], "folds": 10,
    "nfes": [5, 8, 10, 15, 20, 30, 50], "reference_steps": 1000,
    # noise: x_T; sampler: the generator of the stochastic rows (fresh at every cell); kernel:
    # the Fourier features; floor: the exact draws of the mixture metric's floor
    "seeds": {"noise": 3, "sampler": 4, "kernel": 0, "floor": 2},
    "objectives": {
        "ddpm": {"schedule": "linear", "prediction": "eps"},
        "edm": {"_target_": "diffcli.diffusion.objectives.edm.EDM"},
        "flow": {"_target_": "diffcli.diffusion.objectives.flow.Flow"},
    },
    # the configurations sampler=auto may pick: row -> [sampler, options]
    "candidates": {
        **_grid_rows("ddim", {}),
        **_grid_rows("dpmpp_2m", {}),
        **_grid_rows("dpmpp_3m", {}),
        **_grid_rows("dpmpp_3m", {"lower_order_final": False}, "lower_order_final off"),
        **_grid_rows("dpmpp_2m_sde", {}),
        **_grid_rows("unipc", {}),
        **_grid_rows("unipc", {"order": 3, "variant": "bh1"}, "order 3, bh1"),
    },
    # more of ours, each on its default grid (DDPM: the DDPM chain only)
    "others": {
        "ddpm": ["ddpm", {}], "euler": ["euler", {}], "heun": ["heun", {}],
        "heun (logsnr)": ["heun", {"grid": "logsnr", "sigma_max": None}],
        "restart": ["restart", {"restart_k": 1, "restart_steps": 2}],
    },
    "diffusers": _diffusers_rows(),  # peer rows on the DDPM chain: row -> [class, options]
    "require_diffusers": True,  # the run refuses without diffusers (no silently missing rows)
}
# the smoke run: every row, two budgets, 200 samples; the diffusers rows only when installed
SMOKE: dict[str, Any] = {"n": 200, "features": 64, "nfes": [5, 10], "reference_steps": 50,
                         "require_diffusers": False}


def steps_for(make: Callable[..., Sampler], name: str, nfe: int,
              schedule: NoiseSchedule) -> tuple[int, int]:
    """(steps, actual NFE) for a budget of ``nfe`` evaluations: Heun and Restart (up to 2N - 1
    per N steps, Restart plus its cycle's) get the most steps whose :meth:`nfe` fits; the
    others one evaluation per step."""
    if name not in ("heun", "restart"):
        return nfe, nfe
    for steps in range(nfe, 0, -1):
        actual = make(steps=steps).nfe(schedule)
        if actual <= nfe:
            return steps, actual
    return 1, make(steps=1).nfe(schedule)


def our_sampler(name: str, **options: Any) -> Callable[..., Sampler]:
    """Sampler ``name``'s class with ``options`` bound."""
    return lambda **kw: OURS[name](**options, **kw)


def our_run(make: Callable[..., Sampler], den: Denoiser, seed: int) -> Run:
    """A diffcli sampler with ``steps`` steps; stochastic ones draw from a fresh seeded
    generator, so every cell sees the same noise."""
    def run(noise: Tensor, steps: int) -> Tensor:
        return make(steps=steps).sample(den, noise, generator=torch.Generator().manual_seed(seed))
    return run


def diffusers_run(scheduler_cls: Any, net: IdealNetwork, prediction: str,
                  seed: int | None = None, **extra: Any) -> Run:
    """A diffusers scheduler driven by ``net``: x <- step(net(scale_model_input(x, t), t), t,
    x).prev_sample over ``set_timesteps(steps)``, from x_T = noise * init_noise_sigma (1 for the
    VP schedulers; the Euler ones work on x / sqrt(alpha_bar) and ``scale_model_input`` maps it
    back to x_t). A ``seed`` makes the scheduler stochastic: a fresh seeded generator goes to
    every ``step``, so every cell sees the same noise. float64 throughout."""
    def run(noise: Tensor, steps: int) -> Tensor:
        sched = scheduler_cls(num_train_timesteps=net.schedule.num_timesteps,
                              trained_betas=net.schedule.betas.numpy(),
                              prediction_type=DIFFUSERS_PREDICTION[prediction],
                              timestep_spacing="trailing", **extra)
        sched.set_timesteps(steps)
        options = {} if seed is None else {"generator": torch.Generator().manual_seed(seed)}
        x = noise * sched.init_noise_sigma
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t).to(torch.float64)
            out = net(x_in, torch.full((x.shape[0],), int(t), dtype=torch.long))
            x = sched.step(out, t, x, **options).prev_sample
        return x.to(torch.float64)
    return run


def have_diffusers() -> bool:
    return importlib.util.find_spec("diffusers") is not None


def denoiser(node: Mapping[str, Any]) -> Denoiser:
    """The exact denoiser of the mixture under one objective of the preset."""
    data = two_d_mixture()
    if "_target_" not in node:
        schedule = make_schedule(node["schedule"])
        prediction = Parameterization(node["prediction"])
        return Denoiser(IdealNetwork(data, schedule, prediction), schedule, prediction)
    objective = build("objective", dict(node))
    return Denoiser(IdealObjectiveNetwork(data, objective), objective.lattice(),
                    objective=objective)


@dataclasses.dataclass(frozen=True)
class Row:
    """One row: its name, whether auto may pick it, the sampler name (None: a peer) and how
    to run it."""

    name: str
    candidate: bool
    sampler: str | None
    make: Callable[..., Sampler] | None
    run: Run


def rows(objective: str, den: Denoiser, settings: Mapping[str, Any]) -> list[Row]:
    """Every row to measure on one objective; the diffusers rows on the DDPM chain."""
    seed = settings["seeds"]["sampler"]
    out = []
    for group, candidate in (("candidates", True), ("others", False)):
        for row, (name, options) in settings[group].items():
            if name == "ddpm" and objective != "ddpm":
                continue  # the DDPM chain's ancestral sampler
            make = our_sampler(name, **options)
            out.append(Row(row, candidate, name, make, our_run(make, den, seed)))
    if objective == "ddpm" and have_diffusers():
        import diffusers

        node = settings["objectives"]["ddpm"]
        net = IdealNetwork(two_d_mixture(), den.schedule, Parameterization(node["prediction"]))
        for row, (cls, extra) in settings["diffusers"].items():
            out.append(Row("diffusers " + row, False, None, None, diffusers_run(
                getattr(diffusers, cls), net, node["prediction"], **extra)))
    return out


def cell(row: Row, nfe: int, noise: Tensor, reference: Tensor, kernel: FourierKernel,
         schedule: NoiseSchedule, folds: int) -> dict[str, Any] | None:
    """One row at one NFE budget: {nfe (actual), mmd, se, seconds}; None where the row cannot
    run (a grid the sampler cannot take)."""
    steps, actual = (nfe, nfe) if row.make is None else steps_for(row.make, row.sampler, nfe,
                                                                   schedule)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            x = row.run(noise, steps)
    except ValueError:
        return None
    seconds = time.perf_counter() - t0
    if not bool(torch.isfinite(x).all()):
        return {"nfe": actual, "mmd": math.nan, "se": math.nan, "seconds": seconds}
    mmd, se = coupled_mmd(kernel.features(x), reference, folds)
    return {"nfe": actual, "mmd": mmd, "se": se, "seconds": round(seconds, 3)}


def measure_objective(objective: str, node: Mapping[str, Any], settings: Mapping[str, Any],
                      kernel: FourierKernel, noise: Tensor) -> dict[str, Any]:
    """Every row's cells on one objective, and its reference's distance to the mixture."""
    den = denoiser(node)
    with torch.inference_mode():
        exact = DPMSolverPP3M(steps=settings["reference_steps"], grid="logsnr").sample(den, noise)
    reference = kernel.features(exact)
    out = []
    for row in rows(objective, den, settings):
        cells = [cell(row, nfe, noise, reference, kernel, den.schedule, settings["folds"])
                 for nfe in settings["nfes"]]
        out.append({"sampler": row.name, "candidate": row.candidate, "peer": row.make is None,
                    "config": None if row.make is None else [row.sampler, plain(
                        settings["candidates" if row.candidate else "others"][row.name][1])],
                    "cells": cells})
        print(f"  {objective} / {row.name}: {' '.join(text(c) for c in cells)}", flush=True)
    to_mixture = mmd_to_mixture(exact, two_d_mixture(), kernel)
    print(f"{objective}: the reference's MMD^2 to the mixture {to_mixture:.2e}", flush=True)
    return {"reference_to_mixture": to_mixture, "rows": out}


def measure(settings: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """Every objective's rows at every NFE budget of ``settings``. Refuses (one line, exit 1)
    when ``require_diffusers`` and diffusers is missing; without that requirement the peer rows
    are skipped and the result says so."""
    if not have_diffusers() and settings["require_diffusers"]:
        raise SystemExit(f"error: {NO_DIFFUSERS}")
    seeds, n = settings["seeds"], settings["n"]
    kernel = FourierKernel.gaussian(2, settings["bandwidths"], settings["features"],
                                    seeds["kernel"])
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seeds["noise"]),
                        dtype=torch.float64)
    data = two_d_mixture()
    floor = [mmd_to_mixture(data.sample(n, torch.Generator().manual_seed(seeds["floor"] + k)),
                            data, kernel) for k in range(5)]
    floor_rms = math.sqrt(sum(f * f for f in floor) / len(floor))
    print(f"MMD^2 of {n:,} exact draws to the mixture (5 draws, RMS): {floor_rms:.1e}",
          flush=True)
    objectives = {name: measure_objective(name, node, settings, kernel, noise)
                  for name, node in settings["objectives"].items()}
    if have_diffusers():
        import diffusers
        peers = diffusers.__version__
    else:
        peers = "skipped: diffusers is not installed (pip install 'diffcli[bench]')"
    return {"exact_draws_to_mixture_rms": floor_rms, "diffusers": peers,
            "nfes": list(settings["nfes"]), "n": n, "objectives": objectives}


def text(c: Mapping[str, Any] | None, with_se: bool = False) -> str:
    """A cell as the tables show it: MMD^2 to 2 digits (± its standard error), the actual NFE
    in parentheses when it differs from the column's; "n/a" where the row cannot run."""
    if c is None:
        return "n/a"
    if not math.isfinite(c["mmd"]):
        return "NaN"
    out = f"{c['mmd']:.1e}" + (f" ± {c['se']:.0e}" if with_se else "")
    return out


def _cells_text(row: Mapping[str, Any], nfes: list[int]) -> list[str]:
    return [text(c) + (f" ({c['nfe']})" if c is not None and c["nfe"] != nfe else "")
            for c, nfe in zip(row["cells"], nfes, strict=True)]


def nfe_table(objective: str) -> Callable[[Mapping[str, Any]], str]:
    """The table of one objective: one row per sampler, one column per NFE."""
    def render(result: Mapping[str, Any]) -> str:
        part, nfes = result["objectives"][objective], result["nfes"]
        head = (f"MMD^2 to the exact ODE solution ({result['n']:,} coupled pairs); the "
                f"reference's own MMD^2 to the mixture: {part['reference_to_mixture']:.1e} "
                f"(exact draws: {result['exact_draws_to_mixture_rms']:.0e} RMS)"
                + (f"; diffusers {result['diffusers']}" if objective == "ddpm" else "")
                + ".\n\n")
        body = [[r["sampler"], *_cells_text(r, nfes)] for r in part["rows"]]
        return head + markdown_table(["sampler", *(f"NFE {n}" for n in nfes)],
                                     "l" + "r" * len(nfes), body)
    return render


def best_table(result: Mapping[str, Any]) -> str:
    """Per objective and NFE: the best diffcli row (the lowest MMD^2 + 2 standard errors; its
    MMD^2 ± standard error, and whether it is ranked: at least 5 standard errors above zero),
    auto's pick against it (ratio of MMD^2; the pick weighs the trained-model yardstick too,
    :mod:`benchmarks.auto_pick`), and the best diffusers row."""
    body = []
    for objective, part in result["objectives"].items():
        ours = [r for r in part["rows"] if not r["peer"]]
        candidates = [r for r in ours if r["candidate"]]
        peers = [r for r in part["rows"] if r["peer"]]
        trained = trained_scores(objective)
        for i, nfe in enumerate(result["nfes"]):
            top, peer = best(ours, i), best(peers, i)
            chosen = pick(candidates, i, nfe, trained)
            c = top["cells"][i]
            ranked = "yes" if c["mmd"] >= 5 * c["se"] else "no"
            ratio = chosen["cells"][i]["mmd"] / c["mmd"] if c["mmd"] > 0 else math.nan
            body.append([objective, str(nfe), top["sampler"], text(c, True), ranked,
                         f"{ratio:.2f}", "-" if peer is None else peer["sampler"],
                         "-" if peer is None else text(peer["cells"][i])])
    return markdown_table(["objective", "NFE", "best diffcli row", "MMD^2", "ranked",
                           "auto / best", "best diffusers row", "MMD^2"], "lrlrrrlr", body)


def plain(value: Any) -> Any:
    """Enums as their values, tuples as lists, mappings walked (JSON-able settings)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def resolve(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings plus what they leave to diffcli's defaults: every field of every row's
    sampler and of every objective, the schedule's betas (their hash) and the mixture."""
    samplers = {row: {k: plain(v) for k, v in dataclasses.asdict(
        our_sampler(name, **options)(steps=1)).items() if k != "steps"}
        for group in ("candidates", "others") for row, (name, options) in settings[group].items()}
    objectives = {name: ({k: plain(v) for k, v in dataclasses.asdict(
        build("objective", dict(node))).items()} if "_target_" in node else dict(node))
        for name, node in settings["objectives"].items()}
    data, betas = two_d_mixture(), make_schedule("linear").betas
    return {**plain(settings), "samplers": samplers, "objectives_resolved": objectives,
            "schedule_betas": {"T": len(betas), "sha256": digest(betas.tolist())},
            "mixture": {"weights": data.weights.tolist(), "means": data.means.tolist(),
                        "stds": data.stds.tolist()}}


BENCHMARK = Benchmark(
    name="sampler_nfe", title="MMD^2 to the exact ODE solution against NFE (2-D mixture, exact "
                              "networks); the table of sampler=auto",
    preset=PRESET, smoke=SMOKE, run=measure, resolve=resolve,
    tables={"ddpm": nfe_table("ddpm"), "edm": nfe_table("edm"), "flow": nfe_table("flow"),
            "best": best_table},
    files={AUTO_TABLE: auto_table})


def main() -> None:
    """Explore other settings (printed, not published): n, NFEs."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="samples per cell")
    ap.add_argument("--nfes", type=int, nargs="+", default=PRESET["nfes"])
    args = ap.parse_args()
    start = time.perf_counter()
    result = measure({**PRESET, "n": args.n, "nfes": args.nfes, "require_diffusers": False},
                     Path("."))
    print("\n" + best_table(result))
    print(f"\ntotal runtime: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
