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

Run: ``python benchmarks/sampler_nfe.py [--schedule cosine] [--prediction v] [--n 10000]
[--grid karras]``.
With the default n = 10,000 it takes about 3 minutes on 2 CPU cores with the 28 rows (192 s;
a row is ~1,200 network calls of 4-15 ms each, depending on the load), and the time
grows linearly with n, while the noise floor shrinks only like n^(-1/4) (it is dominated by the
scatter of the mode weights).
The diffusers schedulers compute in float32, so they agree with ours to ~1e-5, not 1e-12.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import os
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

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
from diffcli.diffusion.schedules import (
    NoiseSchedule,  # noqa: E402
    make_schedule,  # noqa: E402
)
from diffcli.eval.distances import sliced_wasserstein  # noqa: E402

NFES = (5, 10, 20, 50, 100, 1000)
# Restart with one cycle of two Heun steps (4 extra evaluations), so that it fits NFE 5
RESTART = functools.partial(Restart, restart_k=1, restart_steps=2)
OURS: dict[str, Callable[..., Sampler]] = {
    "ddpm": DDPM, "ddim": DDIM, "dpmpp_2m": DPMSolverPP2M, "dpmpp_3m": DPMSolverPP3M,
    "dpmpp_2m_sde": DPMSolverPP2MSDE, "euler": Euler, "heun": Heun,
    "unipc": UniPC, "restart": RESTART,
}
# our samplers again with another grid or variant than their default: row -> (sampler, options)
VARIANT_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpmpp_2m (logsnr)": ("dpmpp_2m", {"grid": "logsnr"}),
    "dpmpp_3m (logsnr)": ("dpmpp_3m", {"grid": "logsnr"}),  # the default of diffcli sample
    "unipc (logsnr)": ("unipc", {"grid": "logsnr"}),
    "unipc (karras)": ("unipc", {"grid": "karras"}),
    "unipc (bh1)": ("unipc", {"variant": "bh1"}),  # B1(h): Zhao et al.'s choice unconditionally
    "unipc (order 3, bh1)": ("unipc", {"order": 3, "variant": "bh1"}),
}
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
# (B, 2) noise, number of steps -> (B, 2) samples
Run = Callable[[Tensor, int], Tensor]


def steps_for(name: str, nfe: int, schedule: NoiseSchedule) -> tuple[int, int]:
    """(steps, actual NFE) for a budget of ``nfe`` evaluations: Heun uses 2N - 1 per N steps,
    Restart 2N - 1 plus its restart cycle's (when the grid reaches its interval): the most
    steps that fit."""
    if name == "heun":
        steps = (nfe + 1) // 2
        return steps, 2 * steps - 1
    if name == "restart":
        for steps in range((nfe + 1) // 2, 0, -1):
            actual = RESTART(steps=steps).nfe(schedule)
            if actual <= nfe:
                return steps, actual
        return 1, RESTART(steps=1).nfe(schedule)
    return nfe, nfe


def our_run(cls: Callable[..., Sampler], den: Denoiser, seed: int, grid: str | None = None,
            **options: Any) -> Run:
    """A diffcli sampler with ``steps`` steps on ``grid`` (None: its default grid) and these
    options; stochastic ones draw from a fresh seeded generator, so every cell sees the same
    noise."""
    if grid is not None:
        options["grid"] = grid

    def run(noise: Tensor, steps: int) -> Tensor:
        sampler = cls(steps=steps, **options)
        return sampler.sample(den, noise, generator=torch.Generator().manual_seed(seed))
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


def rows(net: IdealNetwork, prediction: str, grid: str | None = None) -> dict[str, Run]:
    """Every sampler to benchmark, by row name; the diffusers rows only if it is installed and
    our samplers are on their default grids."""
    den = Denoiser(net, net.schedule, prediction)
    suffix = "" if grid is None else f" ({grid})"
    out: dict[str, Run] = {name + suffix: our_run(cls, den, seed=4, grid=grid)
                           for name, cls in OURS.items()}
    if grid is None:
        out.update({row: our_run(OURS[name], den, seed=4, **options)
                    for row, (name, options) in VARIANT_ROWS.items()})
    if grid is None and importlib.util.find_spec("diffusers") is not None:
        from diffusers import (
            DDIMScheduler,
            DEISMultistepScheduler,
            DPMSolverMultistepScheduler,
            EulerAncestralDiscreteScheduler,
            UniPCMultistepScheduler,
        )

        def peer(name: str, cls: Any, **extra: Any) -> None:
            out["diffusers " + name] = diffusers_run(cls, net, prediction, **extra)

        unipc = {"solver_type": "bh2", "predict_x0": True, "solver_order": 2}
        sde = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "seed": 4}
        peer("DDIMScheduler", DDIMScheduler, clip_sample=False)
        peer("DPMSolverMultistep", DPMSolverMultistepScheduler, algorithm_type="dpmsolver++",
             solver_order=2)
        peer("DPMSolverMultistep 3M", DPMSolverMultistepScheduler,
             algorithm_type="dpmsolver++", solver_order=3)
        peer("DPMSolverMultistep 2M SDE", DPMSolverMultistepScheduler, **sde)
        peer("DPMSolverMultistep 2M SDE karras", DPMSolverMultistepScheduler, **sde,
             use_karras_sigmas=True)
        peer("UniPCMultistep bh2", UniPCMultistepScheduler, **unipc)
        peer("UniPCMultistep bh2 karras", UniPCMultistepScheduler, **unipc,
             use_karras_sigmas=True)
        peer("DEISMultistep 3", DEISMultistepScheduler, solver_order=3)
        peer("EulerAncestralDiscrete", EulerAncestralDiscreteScheduler, seed=4)
    return out


def cell(run: Run, name: str, nfe: int, noise: Tensor, truth: Tensor,
         schedule: NoiseSchedule) -> tuple[str, float]:
    """(the table entry, seconds spent sampling) for one sampler at one NFE budget."""
    steps, actual = steps_for(name.split(" ")[0], nfe, schedule)
    if not 1 <= steps <= schedule.num_timesteps:
        return "n/a", 0.0
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            x = run(noise, steps)
    except ValueError:  # a grid this sampler cannot step on
        return "n/a", 0.0
    seconds = time.perf_counter() - t0
    distance = sliced_wasserstein(x, truth)
    text = f"{distance:.4f}" if math.isfinite(distance) else "NaN"  # NaN/inf samples
    return (text if actual == nfe else f"{text} ({actual})"), seconds


def table(title: str, entries: dict[str, list[str]]) -> str:
    """A markdown table with one row per sampler and one column per NFE."""
    head = f"| {title} | " + " | ".join(f"NFE {n}" for n in NFES) + " |"
    rule = "| --- " * (len(NFES) + 1) + "|"
    body = [f"| {name} | " + " | ".join(vals) + " |" for name, vals in entries.items()]
    return "\n".join([head, rule, *body])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schedule", default="linear", choices=["linear", "cosine", "sigmoid"])
    ap.add_argument("--prediction", default="eps", choices=[p.value for p in Parameterization])
    ap.add_argument("--n", type=int, default=10_000, help="samples per cell and true samples")
    ap.add_argument("--grid", default=None,
                    choices=[g.value for g in GridKind if g is not GridKind.CUSTOM],
                    help="step all our samplers on this grid (default: each one's own)")
    args = ap.parse_args()
    start = time.perf_counter()
    data, schedule = two_d_mixture(), make_schedule(args.schedule)
    net = IdealNetwork(data, schedule, Parameterization(args.prediction))
    truth = data.sample(args.n, torch.Generator().manual_seed(1))
    floor = sliced_wasserstein(truth, data.sample(args.n, torch.Generator().manual_seed(2)))
    noise = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64)
    grid = "each sampler's default grid" if args.grid is None else f"grid={args.grid}"
    print(f"{args.schedule} schedule (T={schedule.num_timesteps}), {args.prediction} prediction, "
          f"{grid}; "
          f"sliced W2 (256 directions) of {args.n:,} samples vs {args.n:,} true samples; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"noise floor (two independent true samples): {floor:.4f}\n", flush=True)
    sw: dict[str, list[str]] = {}
    secs: dict[str, list[str]] = {}
    for name, run in rows(net, args.prediction, args.grid).items():
        results = [cell(run, name, nfe, noise, truth, schedule) for nfe in NFES]
        sw[name] = [text for text, _ in results]
        secs[name] = [f"{s:.2f}" for _, s in results]
        print(f"  {name}: done", flush=True)
    print("\n" + table("sliced W2", sw) + "\n\n" + table("seconds", secs))
    print(f"\ntotal runtime: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
