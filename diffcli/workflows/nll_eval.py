"""`diffcli eval-nll`: the negative log-likelihood of a run's data under the model, bits/dim.

Two estimates (``method=vlb | ode | both``):

* ``vlb``: the variational bound L = L_T + sum_t L_{t-1} + L_0 (Ho et al. 2020, eq. 5) over all T
  terms, or ``steps`` terms, one per geometric stratum of t weighted by its length (``steps=``;
  an estimate, said as such), with p's variance learned (Nichol & Dhariwal 2021) or fixed,
  and L_0 the discretized 256-bin decoder for images (eq. 13) or a continuous Gaussian for 2-D
  points. With all T terms an upper bound on the NLL. The mean of each term over the items is
  plotted against t.
* ``ode``: the exact likelihood of the probability-flow ODE (Song et al. 2021, Sec. 4.3) with an
  adaptive solver and Hutchinson's trace estimator; images are uniformly dequantized.

Per-item values give the mean and a 95% confidence interval over items. Results: a table on
stdout and ``<run dir>/eval/nll-<method>-<split>-n<N>.json`` (or ``out=``).
"""

from __future__ import annotations

import importlib.metadata
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torch import Tensor

from diffcli.api import resolve_options, vlb
from diffcli.checkpoint import LoadedRun
from diffcli.components import build_datamodule, plain
from diffcli.console import progress
from diffcli.diffusion.generate import to_uint8
from diffcli.diffusion.ode_likelihood import image_nll, ode_log_likelihood
from diffcli.errors import DiffcliError
from diffcli.files import write_json_output
from diffcli.restore import OpenedRun, nll_method, open_run, pick_device
from diffcli.runs import run_dir_of, run_to_use
from diffcli.viz.plots import plot_vlb_terms

console = Console(stderr=True, soft_wrap=True)  # a log line stays one line
Z95 = 1.959964  # two-sided 95% normal quantile


@dataclass
class Items:
    """The evaluated data: x0 (N, ...) as the model sees it, and where it came from."""

    x0: Tensor
    split: str
    dataset: str
    kind: str


def load_items(cfg: DictConfig, opened: OpenedRun) -> Items:
    """The first ``n`` items of the run's dataset (``split=``, ``root=`` override it), never
    downloaded, random flips off."""
    node = dict(plain(opened.run.config["dataset"]))
    node["random_flip"] = False
    if cfg.split is not None:
        node["split"] = str(cfg.split)
    if cfg.root is not None:
        node["root"] = str(cfg.root)
    dm = build_datamodule(node)
    data, _ = dm.head(int(cfg.n))
    n = int(cfg.n)
    if len(data) < n:
        raise DiffcliError(f"n={n}, but dataset={node.get('name')} split "
                           f"{node.get('split', 'train')} has {len(data)} items: lower n")
    x0 = data[:n].float()
    if opened.codec is not None:  # latent diffusion: the likelihood of the scaled latents
        x0 = opened.codec.encode_batches(x0)
        return Items(x0, str(node.get("split", "train")), str(node.get("name")), "latent")
    return Items(x0, str(node.get("split", "train")), str(node.get("name")), dm.kind)



def run_vlb(cfg: DictConfig, opened: OpenedRun, items: Items, decoder: str, variance: str,
            device: torch.device) -> tuple[Tensor, Tensor, list[int]]:
    """(bits/dim per item (N,), mean L_t per evaluated term (K,) in bits/dim, their t):
    :func:`diffcli.api.vlb` with the command's keys."""
    return vlb(opened, items.x0, items.kind, decoder, variance, steps=cfg.steps,
               seed=int(cfg.seed), batch_size=int(cfg.batch_size), device=device)


def run_ode(cfg: DictConfig, opened: OpenedRun, items: Items,
            device: torch.device) -> tuple[Tensor, float]:
    """(bits/dim per item (N,) averaged over ``probes`` solves, mean network evaluations per
    solve). Images are uniformly dequantized 8-bit values (bits/dim of the 8-bit data)."""
    per_item, nfe = [], []
    gen = torch.Generator().manual_seed(int(cfg.seed))
    batches = range(0, len(items.x0), int(cfg.batch_size))
    tol = {"rtol": float(cfg.rtol), "atol": float(cfg.atol)}
    with progress("ODE likelihood", len(batches) * int(cfg.probes), console, unit="solves") as bar:
        for start in batches:
            x0 = items.x0[start:start + int(cfg.batch_size)].to(device)
            solves = []
            for _ in range(int(cfg.probes)):
                if items.kind == "image":
                    out = image_nll(opened.denoiser, to_uint8(x0), generator=gen, **tol)
                else:
                    out = ode_log_likelihood(opened.denoiser, x0, generator=gen, **tol)
                solves.append(out["bpd"].detach().cpu())
                nfe.append(float(out["nfe"]))
                bar.advance()
            per_item.append(torch.stack(solves).mean(0))
    return torch.cat(per_item), sum(nfe) / len(nfe)


def summary(values: Tensor) -> dict[str, float]:
    """Mean, standard error and the 95% interval over items (bits/dim)."""
    n = len(values)
    mean = float(values.double().mean())
    sem = float(values.double().std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return {"bits_per_dim": mean, "sem": sem, "ci95_low": mean - Z95 * sem,
            "ci95_high": mean + Z95 * sem, "n": n}


def _versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "diffcli"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _table(results: dict[str, dict[str, float]], items: Items) -> Table:
    what = items.dataset
    if items.kind == "latent":
        shape = "x".join(map(str, items.x0.shape[1:]))
        what = f"the {shape} latents of {items.dataset} (bits per latent dim, not per pixel)"
    table = Table(title=f"NLL of {what} split={items.split}, n={len(items.x0)}")
    for col in ("method", "bits/dim", "95% interval"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for method, r in results.items():
        table.add_row(method, f"{r['bits_per_dim']:.4f}",
                      f"[{r['ci95_low']:.4f}, {r['ci95_high']:.4f}]")
    return table


def eval_nll(cfg: DictConfig, run: LoadedRun | None = None) -> Path:
    """Evaluate the NLL of a run (``run``: its checkpoint, when the command's check read it);
    returns the JSON file written."""
    started = time.perf_counter()
    device = pick_device(str(cfg.device))
    run = run_to_use(cfg.ckpt, cfg.runs_root, run)
    ckpt = run.path
    opened = open_run(run, use_ema=bool(cfg.use_ema), device=device)
    kind = "latent" if opened.codec is not None else opened.info.kind
    decoder, variance = resolve_options(str(cfg.decoder), str(cfg.variance), kind,
                                        opened.run.learned_variance, ckpt)
    items = load_items(cfg, opened)
    method = nll_method(str(cfg.method), run)
    methods = ["vlb", "ode"] if method == "both" else [method]
    results: dict[str, dict[str, Any]] = {}
    eval_dir = run_dir_of(ckpt) / "eval"
    stem = f"{items.split}-n{len(items.x0)}"
    pictures: list[Callable[[], Path]] = []  # drawn once the JSON is written
    if "vlb" in methods:
        bpd, terms, ts = run_vlb(cfg, opened, items, decoder, variance, device)
        every = len(ts) == opened.schedule.num_timesteps
        results["vlb"] = {**summary(bpd), "terms": "all" if every else len(ts),
                          "terms_chosen": "every t" if every else
                          "t = 0 and one t per geometric stratum, weighted by its length "
                          "(an estimate of the bound)", "decoder": decoder,
                          "variance": variance}
        title = (f"{items.dataset} {items.split}: L_t per term (bits/dim), {len(ts)} of "
                 f"{opened.schedule.num_timesteps} terms")
        pictures.append(lambda ts=ts, terms=terms, title=title: plot_vlb_terms(
            ts, terms.tolist(), eval_dir / f"vlb-terms-{stem}.png", title=title))
    if "ode" in methods:
        bpd, nfe = run_ode(cfg, opened, items, device)
        results["ode"] = {**summary(bpd), "nfe_per_solve": nfe, "rtol": float(cfg.rtol),
                          "atol": float(cfg.atol), "probes": int(cfg.probes),
                          "dequantized": items.kind == "image"}
    record = {"results": results, "n": len(items.x0), "split": items.split,
              "dataset": items.dataset, "checkpoint": str(ckpt.resolve()),
              "global_step": opened.run.global_step, "weights": opened.weights,
              "seed": int(cfg.seed), "versions": _versions(), "device": str(device),
              "space": "latent" if items.kind == "latent" else "data",
              **({"latent_shape": list(items.x0.shape[1:]),
                  "note": "bits per dimension of the scaled latents s E(x), not of pixels"}
                 if items.kind == "latent" else {}),
              "seconds": round(time.perf_counter() - started, 1)}
    out = Path(str(cfg.out)).expanduser() if cfg.out else \
        eval_dir / f"nll-{method}-{stem}.json"
    out = write_json_output(out, record, "eval-nll", overwrite=bool(cfg.overwrite))
    if pictures:
        eval_dir.mkdir(parents=True, exist_ok=True)
    written = [draw() for draw in pictures]
    Console().print(_table(results, items))
    console.print(f"[green]wrote[/] {out}" + "".join(f", {p}" for p in written))
    return out

