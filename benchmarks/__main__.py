"""``python -m benchmarks list | run NAME|all [--smoke] [--out DIR] | render | check``.

``run`` measures with each benchmark's pinned preset and writes ``docs/results/NAME.json``, then
re-renders the docs' tables; ``--smoke`` runs the same code end to end with tiny settings and
writes to a scratch folder (``--out``, default a temporary one), never over the published
results. ``render`` rewrites the docs' tables from the JSON files; ``check`` exits 1 when a table
differs from its JSON or a result is stale."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.core import RESULTS, ROOT, registry, render_docs, run, stale


def stop_on_sigterm() -> None:
    """SIGTERM stops a benchmark as Ctrl-C does: as an exception (exit 143), so that
    ``subprocess.run`` kills the ``diffcli`` command it is waiting for instead of leaving it
    running on as an orphan; its run is not stamped finished, so the next run retrains it."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list")
    go = sub.add_parser("run")
    go.add_argument("names", nargs="+", help="benchmark names, or all")
    go.add_argument("--smoke", action="store_true", help="tiny settings, to a scratch folder")
    go.add_argument("--out", type=Path, help="where the JSON files go")
    sub.add_parser("render")
    sub.add_parser("check")
    args = parser.parse_args(argv)
    benches = registry()
    if args.action == "list":
        for name, bench in benches.items():
            print(f"{name:20s} {bench.title}")
        return 0
    if args.action in ("render", "check"):
        problems = render_docs(benches, write=args.action == "render") + stale(benches)
        print("\n".join(problems) or "every table matches its result; no result is stale")
        return 1 if problems and args.action == "check" else 0
    names = list(benches) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in benches]
    if unknown:
        print(f"error: unknown benchmark {', '.join(unknown)}; choose from: "
              f"{', '.join(benches)} or all", file=sys.stderr)
        return 2
    stop_on_sigterm()
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke else RESULTS)
    if args.smoke and out.resolve() == RESULTS.resolve():
        print("error: --smoke never writes over docs/results", file=sys.stderr)
        return 2
    for name in names:
        start = time.perf_counter()
        work = out / "work" / name if args.smoke else ROOT / "benchmarks" / "out" / name
        path = run(benches[name], args.smoke, out, work)
        print(f"{name}: {time.perf_counter() - start:.1f} s -> {path}", flush=True)
    if not args.smoke:
        render_docs(benches)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
