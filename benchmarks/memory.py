"""Peak memory of sampling and evaluation, measured: does it stay flat as ``n`` grows?

1. train the digits model (``diffcli train dataset=digits``, ``--train-steps`` steps) once;
2. run ``diffcli sample n=N sampler=ddim steps=5`` for each N of ``--n`` and
   ``diffcli eval-fid n=--fid-n extractor=standin`` as real processes, each reading its own
   peak resident memory (``os.wait4``'s ``ru_maxrss``: the child's high-water mark);
3. print a markdown table: N, peak RSS, wall time, and the ratio to the smallest N.

Run: ``python benchmarks/memory.py`` (about 10 minutes on 2 CPU cores with the defaults;
``--n 1000 100000`` is the issue's pair). ``--reuse`` keeps the trained run under
``benchmarks/out/memory``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "memory"


def peak(args: list[str], cwd: Path) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of ``diffcli <args>`` run in ``cwd``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "diffcli", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"diffcli {' '.join(args)} failed:\n{err[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 100000])
    parser.add_argument("--fid-n", type=int, default=50000)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    if OUT.exists() and not args.reuse:
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True, exist_ok=True)
    if not list(OUT.glob("outputs/*/*/checkpoints/last.ckpt")):
        peak(["train", "dataset=digits", f"trainer.max_steps={args.train_steps}",
              "logger=none"], OUT)
    rows = []
    for n in args.n:
        rss, wall = peak(["sample", f"n={n}", "sampler=ddim", "steps=5", "overwrite=true"], OUT)
        rows.append((f"sample n={n}", rss, wall))
    if args.fid_n:
        rss, wall = peak(["eval-fid", f"n={args.fid_n}", "extractor=standin", "sampler=ddim",
                          "steps=5", "overwrite=true"], OUT)
        rows.append((f"eval-fid n={args.fid_n} extractor=standin", rss, wall))
    base = rows[0][1]
    print("| command (digits model, ddim 5 steps) | peak RSS | wall | RSS / first |")
    print("| --- | --- | --- | --- |")
    for name, rss, wall in rows:
        print(f"| `diffcli {name}` | {rss:.0f} MiB | {wall:.0f} s | {rss / base:.2f}x |")


if __name__ == "__main__":
    main()
