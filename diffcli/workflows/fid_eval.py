"""`diffcli eval-fid`: FID (and IS / KID / precision-recall) of a trained run or of image files.

Generated side: ``n`` samples (default 50,000) of the newest run (or ``ckpt=``) with the chosen
sampler, seed set k = seeds k*n .. k*n + n - 1 for k < ``repeats`` (EDM reports the min over 3
sets); or the images of ``samples=<folder | .npz>``. Reference side: the run's training
dataset (``ref_split=``, random flips off), or ``ref=<folder | .npz>``. Both become uint8
(N, 3, H, W) at the samples' resolution and go through the same extractor (its own resize),
in eval mode. Reference statistics are cached (``cache_dir=``). Results: a table on stdout and
a JSON file - ``<run dir>/eval/fid-<sampler>-<steps>-n<N>.json`` for a run, or next to the
samples (``<folder>/fid-n<N>.json``, ``<name>.fid-n<N>.json`` for a .npz) - or ``out=``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from diffcli.checkpoint import LoadedRun
from diffcli.components import build_datamodule
from diffcli.data.labels import batch_data, collate
from diffcli.diffusion.generate import CountingNet, compact_seeds, to_uint8
from diffcli.errors import CheckpointError, DiffcliError
from diffcli.eval.cache import RefStats, default_cache_dir, reference_key, reference_statistics
from diffcli.eval.extractors import INCEPTION, STANDIN_WARNING, Extractor, open_extractor
from diffcli.eval.features import extract_features
from diffcli.eval.images import (
    DatasetRef,
    ImageSource,
    file_fingerprint,
    folder_fingerprint,
    open_reference_npz,
    open_samples,
    require_square,
    size_text,
    to_rgb,
)
from diffcli.eval.metrics import (
    NEEDS_REF_FEATURES,
    REFERENCE_METRICS,
    compute_metrics,
    parse_metrics,
)
from diffcli.eval.sampling import generated_batches, seed_set
from diffcli.files import write_json_output
from diffcli.guided_run import Guidance, forward_rows, guide
from diffcli.restore import (
    autocast,
    check_precision,
    make_sampler,
    open_run,
    pick_device,
    restore_autoencoder,
    sampler_name,
    settle_sampler,
)
from diffcli.runs import run_dir_of, run_to_use
from diffcli.viz.plots import plot_sweep
from diffcli.workflows.draw_samples import guidance_keys, sampler_choice

console = Console(stderr=True, soft_wrap=True)  # a log line stays one line
DEFAULT_N = 50_000  # the usual FID-50k
SWEEPABLE = ("guidance", "classifier_scale")


@dataclass
class FakeSide:
    """The generated images: ``batches(k)`` serves seed set k as uint8 (B, 3, H, W)."""

    size: tuple[int, int]
    n: int
    batches: Callable[[int], Iterator[Tensor]]
    seeds: Callable[[int], str]
    out_path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] | None = None  # the run's training dataset config
    counter: CountingNet | None = None
    announce: str = ""  # printed when sampling starts


def _versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "torchvision", "torch-fidelity", "numpy", "diffcli"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _suffix(cfg: DictConfig) -> str:
    return "" if cfg.extractor == INCEPTION else f"-{cfg.extractor}"


def _samples_side(cfg: DictConfig) -> FakeSide:
    """samples=<folder | .npz>: the images as they are (first ``n``, or all)."""
    if int(cfg.repeats) != 1:
        raise DiffcliError(f"repeats={cfg.repeats} needs a run to sample from; samples= is one "
                           "fixed set of images")
    source = open_samples(str(cfg.samples), None if cfg.n is None else int(cfg.n))
    path = Path(str(cfg.samples)).expanduser()
    name = f"fid-n{len(source)}{_suffix(cfg)}.json"
    out = path / name if path.is_dir() else path.with_name(f"{path.stem}.{name}")
    return FakeSide(source.size, len(source), lambda k: source.batches(int(cfg.batch_size)),
                    lambda k: "files", out,
                    {"samples": str(path.resolve()), "description": source.description})


def _run(cfg: DictConfig, run: LoadedRun | None) -> LoadedRun:
    try:
        return run_to_use(cfg.ckpt, cfg.runs_root, run)
    except CheckpointError as e:
        raise CheckpointError(f"{e}, or samples=<folder | .npz> to evaluate image files") from None


def _run_side(cfg: DictConfig, run: LoadedRun, n: int, device: torch.device,
              guidance: Guidance | None = None) -> FakeSide:
    """A trained run: sample seed set k on demand with the configured sampler (and guidance:
    classes balanced over the n images, :func:`diffcli.guided_run.class_labels`); an
    autoencoder: its reconstructions."""
    ckpt = run.path
    if run.kind.encodes:
        return _reconstruction_side(cfg, run, n, device)
    opened = open_run(run, use_ema=bool(cfg.use_ema), device=device,
                      batch_size=min(int(cfg.batch_size), n),
                      rows_per_item=forward_rows(cfg.get("guidance")))
    guided = guide(opened, guidance or Guidance(), device)
    labels = guided.labels(n, cyclic=True)
    info = opened.info
    if info.kind != "image":
        raise DiffcliError(f"FID needs images; {ckpt} was trained on 2-D points "
                           f"(dataset={opened.run.config['dataset'].get('name')})")
    sampler, steps = make_sampler(cfg.sampler, opened.schedule, run=opened.run, steps=cfg.steps,
                                  clip_denoised=bool(cfg.clip_denoised))
    name = sampler_name(sampler_choice(), sampler)
    sampler, notes = settle_sampler(sampler, opened.denoiser)
    precision = str(cfg.precision)
    check_precision(precision, device)

    def batches(k: int) -> Iterator[Tensor]:
        return generated_batches(sampler, guided.denoiser, opened.sample_shape, seed_set(k, n),
                                 int(cfg.batch_size), device, lambda: autocast(precision, device),
                                 labels=labels,
                                 decode=opened.decode if opened.codec is not None else None)

    stem = "" if ckpt.name == "last.ckpt" else f"-{ckpt.stem}"
    out = run_dir_of(ckpt) / "eval" / (f"fid-{name}-{steps}{guided.tag}-n{n}{stem}"
                                         f"{_suffix(cfg)}.json")
    sampler_config = {**OmegaConf.to_container(cfg.sampler, resolve=True),
                      "clip_denoised": bool(cfg.clip_denoised)}
    if cfg.steps is not None:
        sampler_config["steps"] = int(cfg.steps)
    meta = {"checkpoint": str(ckpt.resolve()), "global_step": opened.run.global_step,
            "weights": opened.weights, "sampler": name, "steps": steps,
            "sampler_config": sampler_config, "clip_denoised": bool(cfg.clip_denoised),
            "precision": precision, "sampler_notes": notes, **guided.meta}
    guided_text = "".join(f", {k} {v}" for k, v in guided.meta.items() if k != "classes")
    announce = (f"sampling {n} images x {cfg.repeats} seed set(s) from {ckpt} ({name}, {steps} "
                f"steps, {opened.weights} weights, {size_text(info.shape[-2:])}{guided_text})"
                + "".join(f"\nnote: {line}" for line in notes))
    return FakeSide(tuple(info.shape[-2:]), n, batches, lambda k: compact_seeds(seed_set(k, n)),
                    out, meta, dict(opened.run.config["dataset"]), opened.counter, announce)


def _reconstruction_side(cfg: DictConfig, run: LoadedRun, n: int,
                         device: torch.device) -> FakeSide:
    """An autoencoder: its reconstructions of the first ``n`` images of its dataset (rFID,
    Rombach et al. 2022, Table 8), with their mean PSNR and SSIM in the record."""
    from diffcli.lit.autoencoder_module import psnr_ssim, reconstruct

    if int(cfg.repeats) != 1:
        raise DiffcliError(f"repeats={cfg.repeats}: an autoencoder's reconstructions are one "
                           "fixed set of images; use repeats=1")
    ckpt = run.path
    net = restore_autoencoder(run, device, use_ema=bool(cfg.use_ema))
    dm = build_datamodule(run.config["dataset"])
    n = min(n, dm.num_samples)
    meta: dict[str, Any] = {"checkpoint": str(ckpt.resolve()), "global_step": run.global_step,
                            "reconstructions": True}
    sums = {"psnr": 0.0, "ssim": 0.0}

    def batches(k: int) -> Iterator[Tensor]:
        size, done = int(cfg.batch_size), 0
        for batch in DataLoader(Subset(dm.dataset, range(n)), batch_size=size, collate_fn=collate):
            x = batch_data(batch)
            recon = reconstruct(net, x, size).float()
            done += len(x)
            for key, value in psnr_ssim(x, recon).items():
                sums[key] += value * len(x)
            meta.update({key: total / done for key, total in sums.items()})
            yield to_rgb(to_uint8(recon))

    shape = tuple(dm.data_shape[-2:])
    out = run_dir_of(ckpt) / "eval" / f"rfid-n{n}{_suffix(cfg)}.json"
    announce = f"reconstructing {n} images of {ckpt} ({size_text(shape)}): rFID"
    return FakeSide(shape, n, batches, lambda k: f"first {n} images", out, meta,
                    dict(run.config["dataset"]), None, announce)


def _reference_source(cfg: DictConfig, fake: FakeSide) -> tuple[Callable[[], ImageSource], dict]:
    """How to open the reference images (called only on a cache miss) and their cache key."""
    ref_n = None if cfg.ref_n is None else int(cfg.ref_n)
    workers = int(cfg.num_workers)
    if cfg.ref:
        path = Path(str(cfg.ref)).expanduser()
        res = list(fake.size)
        if path.is_file() and path.suffix == ".npz":
            key = {"kind": "npz", "dataset": f"npz_{path.stem}", "resolution": res,
                   **file_fingerprint(path)}
            return lambda: open_reference_npz(path, fake.size, ref_n), key
        if not path.is_dir():
            raise DiffcliError(f"ref={cfg.ref}: no such folder or .npz file")
        size = require_square(fake.size, f"the folder ref={cfg.ref}")
        folder = DatasetRef("imagefolder", str(path), "train", size, 3)
        key = {"kind": "folder", "dataset": f"folder_{path.name}", "resolution": res,
               **folder_fingerprint(path)}
        return lambda: folder.open(ref_n, workers), key
    if fake.dataset is None:
        raise DiffcliError("samples= needs ref=<folder | .npz>: the real images to compare with")
    if fake.dataset.get("root") is None and cfg.ref_root is None and \
            fake.dataset.get("name") == "imagefolder":  # e.g. an imported diffusers folder
        raise DiffcliError("this model names no training data (an imported diffusers folder): "
                           "pass ref=<folder of images | .npz>, the real images to compare with")
    dataset = DatasetRef.from_mapping(
        fake.dataset, image_size=require_square(fake.size, "the training dataset"),
        split=cfg.ref_split, root=None if cfg.ref_root is None else str(cfg.ref_root))
    return lambda: dataset.open(ref_n, workers), {"kind": "dataset", **dataset.cache_key()}


def _reference(cfg: DictConfig, fake: FakeSide, extractor: Extractor, metrics: list[str],
               device: torch.device) -> tuple[RefStats, dict]:
    opener, source_key = _reference_source(cfg, fake)
    key = reference_key(source_key, extractor, None if cfg.ref_n is None else int(cfg.ref_n))
    cache_dir = None
    if cfg.cache:
        cache_dir = Path(str(cfg.cache_dir)).expanduser() if cfg.cache_dir else default_cache_dir()
    need = bool(NEEDS_REF_FEATURES & set(metrics))
    ref = reference_statistics(opener, key, extractor, device, int(cfg.batch_size), cache_dir,
                               need, console)
    return ref, key


HIGHER_IS_BETTER = ("isc_mean", "precision", "recall", "f_score")


def _summary(results: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """min, mean, max over the seed sets, and ``best``: the max for metrics where higher is
    better (IS, precision, recall), else the min (FID, KID; EDM's reporting)."""
    keys = [k for k in results[0] if k not in ("repeat", "seeds")]
    out = {}
    for k in keys:
        values = [r[k] for r in results]
        best = max(values) if k in HIGHER_IS_BETTER else min(values)
        out[k] = {"best": best, "min": min(values), "mean": sum(values) / len(values),
                  "max": max(values)}
    return out


def _table(summary: dict[str, dict[str, float]], repeats: int, title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    if repeats == 1:
        table.add_column("value", justify="right")
        for k, s in summary.items():
            table.add_row(k, f"{s['best']:.4f}")
    else:
        table.add_column(f"best of {repeats}", justify="right")
        table.add_column(f"mean of {repeats}", justify="right")
        for k, s in summary.items():
            table.add_row(k, f"{s['best']:.4f}", f"{s['mean']:.4f}")
    return table


def _check_counts(cfg: DictConfig) -> None:
    for key in ("n", "ref_n"):
        if cfg[key] is not None and int(cfg[key]) < 2:
            raise DiffcliError(f"{key}={cfg[key]}: FID needs at least 2 images per side "
                               "(a covariance)")
    if int(cfg.repeats) < 1:
        raise DiffcliError(f"repeats={cfg.repeats}: use 1 or more seed sets")
    if int(cfg.batch_size) < 1:
        raise DiffcliError(f"batch_size={cfg.batch_size}: use 1 or more")


def _evaluate(fake: FakeSide, ref: RefStats | None, extractor: Extractor, metrics: list[str],
              repeats: int, device: torch.device) -> list[dict[str, Any]]:
    """Features and metrics of each seed set: [{"repeat", "seeds", <metric>: value, ...}]."""
    keep = {extractor.layers[m] for m in metrics if m in ("isc", "kid", "prc")}
    if fake.announce:
        console.print(fake.announce)
    results = []
    for k in range(repeats):
        label = "sampling + features" if fake.counter is not None else "features"
        label += f" (seed set {k + 1}/{repeats})" if repeats > 1 else ""
        feats = extract_features(fake.batches(k), fake.n, extractor, device, keep, label, console)
        results.append({"repeat": k, "seeds": fake.seeds(k),
                        **compute_metrics(metrics, feats, ref, extractor.layers)})
    return results


def _record(metrics: list[str], results: list[dict[str, Any]], fake: FakeSide,
            ref: RefStats | None, key: dict, extractor: Extractor, device: torch.device,
            batch_size: int) -> dict[str, Any]:
    """Everything the JSON file holds: values, inputs, extractor, library versions."""
    repeats = len(results)
    if fake.counter is not None:  # network evaluations per sample (both CFG halves count)
        fake.meta["nfe"] = fake.counter.rows // max(1, repeats * fake.n)
    return {
        "metrics": metrics, "summary": _summary(results), "results": results, "n": fake.n,
        "repeats": repeats, "resolution": list(fake.size), "generated": fake.meta,
        "reference": None if ref is None else {
            "n": ref.stats.n, "cache": None if ref.path is None else str(ref.path),
            "cached": ref.cached, "key": key},
        "extractor": {"name": extractor.name, "weights": extractor.weights,
                      "layers": extractor.layers, "comparable": extractor.comparable,
                      **({} if extractor.comparable else {"warning": STANDIN_WARNING})},
        "versions": _versions(), "device": str(device),
    }


def guidance_sweep(cfg: DictConfig) -> tuple[str | None, list[Guidance]]:
    """The swept key ("guidance" or "classifier_scale", or None) and one :class:`Guidance`
    per value: ``guidance=[0,1,2,4]`` evaluates each scale (at most one key is a list)."""
    base = guidance_keys(cfg)
    lists = [k for k in SWEEPABLE if OmegaConf.is_list(cfg.get(k)) or isinstance(cfg.get(k), list)]
    if len(lists) > 1:
        raise DiffcliError("sweep one of guidance=[...] and classifier_scale=[...] at a time")
    if not lists:
        return None, [base]
    key = lists[0]
    values = [float(v) for v in cfg[key]]
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise DiffcliError(f"{key}={list(cfg[key])}: give one or more scales >= 0")
    field_name = "scale" if key == "guidance" else "classifier_scale"
    return key, [dataclasses.replace(base, **{field_name: v}) for v in values]


def _evaluate_one(cfg: DictConfig, fake: FakeSide, extractor: Extractor, metrics: list[str],
                  ref: tuple[RefStats | None, dict], device: torch.device,
                  started: float) -> tuple[Path, dict[str, Any]]:
    repeats = int(cfg.repeats)
    results = _evaluate(fake, ref[0], extractor, metrics, repeats, device)
    record = _record(metrics, results, fake, ref[0], ref[1], extractor, device,
                     int(cfg.batch_size))
    record["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(str(cfg.out)).expanduser() if cfg.out else fake.out_path
    out = write_json_output(out, record, "eval-fid", overwrite=bool(cfg.overwrite))
    title = f"{extractor.name}, n={fake.n}" + (f", {repeats} seed sets" if repeats > 1 else "")
    Console().print(_table(record["summary"], repeats, title))
    if fake.meta.get("reconstructions"):
        console.print(f"reconstructions: PSNR {fake.meta['psnr']:.2f} dB, SSIM "
                      f"{fake.meta['ssim']:.4f} (mean of {fake.n} images)")
    return out, record


def eval_fid(cfg: DictConfig, run: LoadedRun | None = None) -> Path:
    """Evaluate FID (and the other requested metrics) of ``samples=`` or of a run (``run``: its
    checkpoint, when the command's check read it); returns the JSON file written (for a
    guidance sweep, the sweep's JSON; its plot beside it)."""
    started = time.perf_counter()
    metrics = parse_metrics(OmegaConf.to_container(cfg.metrics) if OmegaConf.is_config(cfg.metrics)
                            else cfg.metrics)
    _check_counts(cfg)
    swept, guidances = guidance_sweep(cfg)
    if swept and (cfg.samples or cfg.out):
        raise DiffcliError(f"{swept}=[...] sweeps a run's guidance: it cannot be combined with "
                           "samples= or out=")
    device = pick_device(str(cfg.device))
    extractor = open_extractor(str(cfg.extractor), metrics, cfg.weights,
                               bool(cfg.download_weights), device)
    n = DEFAULT_N if cfg.n is None else int(cfg.n)
    if cfg.samples:
        sides = [_samples_side(cfg)]
    else:
        run = _run(cfg, run)
        sides = [_run_side(cfg, run, n, device, g) for g in guidances]
    ref = (_reference(cfg, sides[0], extractor, metrics, device)
           if REFERENCE_METRICS & set(metrics) else (None, {}))
    written = [_evaluate_one(cfg, fake, extractor, metrics, ref, device, started)
               for fake in sides]
    out = written[0][0]
    if swept:
        out = _write_sweep(swept, guidances, written, sides[0])
    if not extractor.comparable:  # after the numbers, where it cannot be missed
        console.print(f"[yellow]warning[/]: {STANDIN_WARNING}")
    console.print(f"[green]wrote[/] {out}")
    return out


def _write_sweep(swept: str, guidances: list[Guidance], written: list[tuple[Path, dict]],
                 first: FakeSide) -> Path:
    """One table, one JSON and one plot of the metrics against the swept scale (the
    trade-off curve of Ho & Salimans 2022, Fig. 4)."""
    field_name = "scale" if swept == "guidance" else "classifier_scale"
    scales = [getattr(g, field_name) for g in guidances]
    rows = [{swept: w, **{k: v["best"] for k, v in rec["summary"].items()}, "file": str(path)}
            for w, (path, rec) in zip(scales, written, strict=True)]
    stem = first.out_path.stem.split("-w")[0].split("-cls")[0]
    out = first.out_path.with_name(f"{stem}-{swept}-sweep.json")
    out = write_json_output(out, {"swept": swept, "rows": rows}, "eval-fid-sweep",
                            overwrite=True)  # the sweep's own summary, rewritten each sweep
    metric_names = [k for k in rows[0] if k not in (swept, "file")]
    table = Table(title=f"{swept} sweep")
    for col in (swept, *metric_names):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(f"{row[swept]:g}", *(f"{row[m]:.4f}" for m in metric_names))
    Console().print(table)
    plot_sweep(scales, {m: [r[m] for r in rows] for m in metric_names}, swept,
               out.with_suffix(".png"))
    console.print(f"[green]wrote[/] {out.with_suffix('.png')}")
    return out
