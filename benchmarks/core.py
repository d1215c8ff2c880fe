"""The benchmark system: each benchmark is a :class:`Benchmark` (a module of ``benchmarks/``
defining ``BENCHMARK``) with pinned settings (``preset``: plain data that does not follow
diffcli's moving defaults), a ``run`` that measures, and the docs tables rendered from its
results. ``python -m benchmarks run NAME|all [--smoke]`` runs them and writes
``docs/results/NAME.json`` (numbers and provenance: commit, command, settings and their hash,
machine, wall time, seeds); ``python -m benchmarks render`` rewrites the docs' tables from those
files, which sit between ``<!-- results: NAME/TABLE -->`` and ``<!-- /results -->`` markers.
``tests/test_benchmarks.py`` fails when a table differs from its JSON or a JSON's resolved
settings differ from what its preset resolves to today (stale)."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("BENCHMARKS_ROOT", HERE.parent))  # the checkout (docs/, results)
RESULTS = ROOT / "docs" / "results"
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
MARKER = re.compile(r"^([ \t]*)<!-- results: ([\w-]+)/([\w-]+) -->\n(.*?)^[ \t]*<!-- /results -->",
                    re.S | re.M)  # indented inside a list item: the table is indented alike

Settings = Mapping[str, Any]
Result = dict[str, Any]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: ``run(settings, workdir) -> result`` (JSON-able; by convention a dict
    with ``rows``), its pinned ``preset``, the ``smoke`` changes that make it end to end in
    seconds, the ``tables`` (id -> render(result) -> markdown) the docs show, and ``resolve``
    (settings -> everything they pin, e.g. the composed training configs; default: the
    settings) whose hash says whether a result is stale."""

    name: str
    title: str
    preset: Settings
    run: Callable[[Settings, Path], Result]
    tables: Mapping[str, Callable[[Result], str]] = field(default_factory=dict)
    smoke: Settings = field(default_factory=dict)
    resolve: Callable[[Settings], Any] | None = None
    # data files rendered from the result like the tables (path under the checkout -> render),
    # e.g. the table sampler=auto reads
    files: Mapping[str, Callable[[Result], str]] = field(default_factory=dict)

    def settings(self, smoke: bool = False) -> dict[str, Any]:
        return {**self.preset, **(self.smoke if smoke else {})}

    def resolved(self, settings: Settings) -> Any:
        return self.resolve(settings) if self.resolve is not None else dict(settings)


MODULES = ("sample_throughput", "train_throughput", "latent_throughput", "memory",
           "sampler_nfe", "objective_nfe", "lenet_fid", "objectives_mnist", "mnist_judge",
           "guidance_mnist", "likelihood_mnist", "latent_mnist", "reflow_moons", "backbones_mnist")


def registry() -> dict[str, Benchmark]:
    """Every benchmark by name (each module of :data:`MODULES` that defines ``BENCHMARK``)."""
    found = {}
    for module in MODULES:
        bench = getattr(importlib.import_module(f"benchmarks.{module}"), "BENCHMARK", None)
        if bench is not None:
            found[bench.name] = bench
    return found


# what varies per machine or run, left out of a composed config: a node (None) or some keys
VARYING: dict[str, tuple[str, ...] | None] = {"hydra": None, "runs_root": None, "ckpt": None,
                                              "out": None, "dataset": ("root",),
                                              "latent": ("ckpt",), "cache_dir": None}


def composed(command: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The config ``diffcli <command> <overrides>`` composes (every default filled in,
    resolved), less what varies per machine or run (:data:`VARYING`): what a benchmark's stage
    runs with, for its staleness hash. ``command``: the config's name (train, sample,
    eval_nll, ...)."""
    from omegaconf import OmegaConf

    from diffcli.cli.objective_choice import implied_objective
    from diffcli.cli.overrides import validate

    cfg = validate(command, implied_objective(command, list(overrides))[0])  # as the CLI does
    out: dict[str, Any] = {}
    for key in cfg:
        if key in VARYING and VARYING[key] is None:
            continue
        value = cfg[key]
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) \
            else value
        for drop in VARYING.get(key) or ():
            value.pop(drop, None)
        out[key] = value
    return out


def child_env() -> dict[str, str]:
    """The environment for a ``python -m diffcli`` child: the same diffcli as this process."""
    import diffcli

    src = str(Path(diffcli.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": src + (os.pathsep + path if path else "")}


def markdown_table(header: Sequence[str], aligns: str, rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table: ``aligns`` one character a column (``l`` left, ``r`` right)."""
    rule = ["---:" if a == "r" else "---" for a in aligns]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def digest(value: Any) -> str:
    """sha256 of ``value`` as canonical JSON (sorted keys), first 16 hex digits."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def machine() -> dict[str, Any]:
    """The CPU model, cores and torch threads, and the GPU when there is one."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "torch": torch.__version__, "python": platform.python_version()}


def commit() -> str:
    """The commit measured (``+dirty`` when the work tree has changes)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()
    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


STAMP = "benchmark-finished.json"  # written into a training run's folder when it finished


def finished_before(folder: Path, args: Sequence[str]) -> bool:
    """Whether ``folder`` holds a training run that this same clean commit finished with these
    same ``args`` (its :data:`STAMP`), so a benchmark stopped midway (Ctrl-C, a session's end)
    retrains only what had not finished when run again. Otherwise the folder is removed: the
    run starts afresh, never resumed from a partial one."""
    stamp = folder / STAMP
    want = {"commit": commit(), "args": list(args)}
    if (not want["commit"].endswith("+dirty") and stamp.is_file()
            and json.loads(stamp.read_text()) == want):
        print(f"reusing {folder}: finished by this commit with these arguments", flush=True)
        return True
    shutil.rmtree(folder, ignore_errors=True)
    return False


def mark_finished(folder: Path, args: Sequence[str]) -> None:
    """Stamp ``folder`` as a run finished by this commit with ``args`` (:func:`finished_before`)."""
    (folder / STAMP).write_text(json.dumps({"commit": commit(), "args": list(args)}))


def run(bench: Benchmark, smoke: bool, out: Path, workdir: Path) -> Path:
    """Run ``bench`` (its preset, or the smoke version) in ``workdir``; write and return
    ``out/<name>.json``."""
    settings = bench.settings(smoke)
    resolved = bench.resolved(settings)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = bench.run(settings, workdir)
    record = {
        "name": bench.name, "title": bench.title, "smoke": smoke, "result": result,
        "settings": settings, "resolved": resolved, "resolved_sha256": digest(resolved),
        "provenance": {
            "commit": commit(), "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
            "wall_s": round(time.perf_counter() - start, 1), "seeds": settings.get("seeds"),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{bench.name}.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    return path


def load(name: str, folder: Path = RESULTS) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def rendered(name: str, table: str, benches: Mapping[str, Benchmark],
             folder: Path = RESULTS) -> str | None:
    """The markdown of table ``name/table`` from its JSON (None: no such result or table)."""
    record = load(name, folder)
    bench = benches.get(name)
    if record is None or bench is None or table not in bench.tables:
        return None
    return bench.tables[table](record["result"]).rstrip("\n") + "\n"


def render_docs(benches: Mapping[str, Benchmark], write: bool = True) -> list[str]:
    """Rewrite every results table in the docs from its JSON; returns the ones that differed
    (``write`` false: only report them) and the ones with no result, as ``file: NAME/TABLE``."""
    problems = []
    for doc in DOCS:
        text = doc.read_text()

        def swap(m: re.Match, doc: Path = doc) -> str:
            indent, name, table = m.group(1), m.group(2), m.group(3)
            body = rendered(name, table, benches)
            if body is None:
                problems.append(f"{doc.name}: {name}/{table} has no result")
                return m.group(0)
            body = "".join(f"{indent}{line}\n" for line in body.splitlines())
            if body != m.group(4):
                problems.append(f"{doc.name}: {name}/{table} differs from its JSON")
            return f"{indent}<!-- results: {name}/{table} -->\n{body}{indent}<!-- /results -->"

        new = MARKER.sub(swap, text)
        if write and new != text:
            doc.write_text(new)
    return problems + render_files(benches, write)


def render_files(benches: Mapping[str, Benchmark], write: bool = True) -> list[str]:
    """Rewrite every benchmark's data files (:attr:`Benchmark.files`) from its JSON; returns the
    ones that differed (``write`` false: only report them) as ``path: differs from NAME's
    JSON``."""
    problems = []
    for name, bench in benches.items():
        record = load(name)
        for rel, render in bench.files.items():
            path = ROOT / rel
            if record is None:
                problems.append(f"{rel}: {name} has no result")
                continue
            text = render(record["result"])
            if not path.is_file() or path.read_text() != text:
                problems.append(f"{rel}: differs from {name}'s JSON")
                if write:
                    path.write_text(text)
    return problems


# Config keys added to diffcli after results were published, each with the value that does what
# the code did before the key existed (dotted, matched at the end of a resolved path, e.g.
# "module.objective"). A result without such a key, whose value today is that one, ran exactly
# what today's preset runs, so it is not stale. Every other difference is.
_ADDED_SINCE = {  # issue 27: the DDPM chain, no reflow (its settings apply only with a ckpt)
    "objective": {"_target_": "diffcli.diffusion.objectives.discrete.DDPM"},
    "reflow": {"ckpt": None, "n": 10000, "sampler": "dpmpp_2m", "steps": 32, "batch_size": 256,
               "use_ema": True, "init": True},
    # issue 34: latent_mnist's reconstruct stage (an autoencoder's `diffcli sample`) never
    # samples, so 3M's new option cannot change it
    "reconstruct.sampler": {"lower_order_final": True},
    # issue 28: the U-Net's activation checkpointing, off (the same numbers, recomputed or not)
    "model": {"grad_checkpointing": False},
    # issue 29: no autoguidance (guide=null samples as before)
    "guide": {"": None},
    # issue 29: post-hoc EMA snapshots, off (they only write files beside the run)
    "callbacks": {"phema._target_": "diffcli.lit.phema.power_ema_snapshots",
                  "phema.every_n_steps": None, "phema.sigma_rels": [0.05, 0.10]},
}
UNCHANGED_BY_DEFAULT: dict[str, Any] = {
    f"{group}.{key}" if key else group: value  # "": the key itself (guide, of every command)
    for group, node in _ADDED_SINCE.items() for key, value in node.items()}


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """``value``'s leaves by dotted path (mappings are walked, an empty one has no leaves; lists
    are leaves)."""
    if not isinstance(value, Mapping):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _neutral(path: str, value: Any, neutral: Mapping[str, Any]) -> bool:
    return any((path == key or path.endswith("." + key)) and value == want
               for key, want in neutral.items())


def differences(published: Any, today: Any,
                neutral: Mapping[str, Any] = UNCHANGED_BY_DEFAULT) -> list[str]:
    """What differs between a result's resolved settings and today's, one line a leaf: changed
    or removed leaves, and added ones unless ``neutral`` says their value is what the code did
    before they existed."""
    old, new = flat(published), flat(today)
    lines = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in old if k in new and old[k] != new[k]]
    lines += [f"{k} removed (was {old[k]!r})" for k in old if k not in new]
    lines += [f"{k} added = {new[k]!r}" for k in new
              if k not in old and not _neutral(k, new[k], neutral)]
    return lines


# Nodes a training config holds but its task does not read: an autoencoder's or a noise-aware
# classifier's run composes an objective (the default, flow since issue 27; the DDPM chain
# before) that nothing builds.
NOT_READ_BY_TASK = {"autoencoder": ("objective",), "classifier": ("objective",)}


def unread(value: Any) -> Any:
    """``value`` (resolved settings) with every training config's :data:`NOT_READ_BY_TASK`
    nodes left out, so that a default they follow cannot make a result stale."""
    if isinstance(value, list):
        return [unread(v) for v in value]
    if not isinstance(value, Mapping):
        return value
    skip = NOT_READ_BY_TASK.get(value.get("task"), ()) if isinstance(value.get("task"), str) \
        else ()
    return {k: unread(v) for k, v in value.items() if k not in skip}


def stale(benches: Mapping[str, Benchmark], folder: Path = RESULTS) -> list[str]:
    """Results whose resolved settings differ from what their preset resolves to today (keys
    added since at their neutral value aside, :data:`UNCHANGED_BY_DEFAULT`), and smoke results
    among the published ones."""
    out = []
    for name, bench in benches.items():
        record = load(name, folder)
        if record is None:
            continue
        today = bench.resolved(bench.preset)
        if record.get("smoke"):
            out.append(f"{name}: a smoke result among the published ones: "
                       f"run python -m benchmarks run {name}")
            continue
        if record.get("resolved_sha256") == digest(today):
            continue
        diff = differences(unread(json.loads(json.dumps(record.get("resolved"), default=str))),
                           unread(json.loads(json.dumps(today, default=str))))
        if diff:
            more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
            out.append(f"{name}: its settings differ from what the preset resolves to today "
                       f"({'; '.join(diff[:3])}{more}): run python -m benchmarks run {name}")
    return out
