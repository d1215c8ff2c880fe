"""Multi-process (DDP) runs end together: a failure in one rank ends every rank.

Lightning starts ranks 1..N-1 of a single-machine DDP run as child processes of rank 0
(its subprocess-script launcher) and watches them with a thread that SIGKILLs everything a
few seconds after a child dies, so a run with one failed rank ended with rank 0's
"connection closed by peer" traceback (or the shell's "Killed", exit 137), and a failure in
rank 0 left the children waiting in a collective. Here:

- a child that fails prints its own one-line error (the CLI prefixes ``rank N:``,
  :func:`rank_name`) and exits non-zero; rank 0's watcher (:class:`RankWatcher`, installed by
  :func:`watch_ranks`) then kills the other children and ends rank 0 with the same exit
  status, printing nothing more;
- when rank 0 itself fails, :func:`stop_other_ranks` kills the children first, then rank 0
  prints its one line.

Ranks started by an external launcher (SLURM, torchrun) are ended by that launcher.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from diffcli.errors import DiffcliError

POLL_S = 0.5


class OtherRankFailed(DiffcliError):
    """Rank 0 stops because another rank failed; that rank already printed its error, so the
    CLI prints nothing more and exits with ``exit_code`` (the failed rank's)."""

    def __init__(self, rank: int, exit_code: int) -> None:
        super().__init__(f"rank {rank} failed (exit {exit_code})")
        self.exit_code = exit_code
        self.silent = True


def rank_name(env: dict[str, str] | None = None) -> str | None:
    """"rank N" (plus "on node M" for node > 0) in a worker process, None in rank 0 or a
    single-process run. Read from the environment Lightning gives its ranks."""
    env = os.environ if env is None else env
    local, node = int(env.get("LOCAL_RANK", "0") or 0), int(env.get("NODE_RANK", "0") or 0)
    if local == 0 and node == 0:
        return None
    return f"rank {local}" + (f" on node {node}" if node else "")


def failed_child(procs: Sequence[subprocess.Popen], wait_s: float = 0.0) -> tuple[int, int] | None:
    """``(rank, exit status)`` of the first child that exited non-zero (``procs[i]`` is rank
    i + 1), waiting up to ``wait_s`` seconds for one to exit; None when none failed."""
    deadline = time.monotonic() + wait_s
    while True:
        for i, proc in enumerate(procs):
            code = proc.poll()
            if code:  # a negative code means killed by a signal: report 128 + signal
                return i + 1, code if code > 0 else 128 - code
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def kill_all(procs: Sequence[subprocess.Popen]) -> None:
    """SIGKILL every child still running (SIGTERM does not end a rank blocked in a
    collective) and reap it."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait()


class RankWatcher(threading.Thread):
    """Rank 0's watch over its child ranks: when one exits non-zero, kill the others and end
    this process with that exit status (the child printed the error line)."""

    def __init__(self, procs: Sequence[subprocess.Popen]) -> None:
        super().__init__(daemon=True, name="diffcli-rank-watcher")
        self.procs = procs
        self.stopped = threading.Event()  # set when rank 0 ends the children itself

    def run(self) -> None:
        while not self.stopped.wait(POLL_S):
            failed = failed_child(self.procs)
            if failed is not None and not self.stopped.is_set():
                kill_all(self.procs)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(failed[1])  # rank 0 may be blocked in a collective: no unwinding
            if all(p.poll() == 0 for p in self.procs):
                return


_WATCHERS: list[RankWatcher] = []


def watch_ranks() -> None:
    """Make Lightning's subprocess launcher watch its children with :class:`RankWatcher`
    instead of its own observer (which SIGKILLs rank 0 as well). Idempotent."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    def launch_watcher(procs: list[subprocess.Popen]) -> None:
        watcher = RankWatcher(procs)
        _WATCHERS.append(watcher)
        watcher.start()

    subprocess_script._launch_process_observer = launch_watcher


def stop_other_ranks(procs: Sequence[subprocess.Popen], wait_s: float) -> None:
    """After an exception in rank 0: if a child failed first (rank 0 then sees a closed
    connection; ``wait_s`` gives the child time to exit), raise :class:`OtherRankFailed`;
    else kill the children so that none is left waiting for rank 0."""
    if not procs:
        return
    failed = failed_child(procs, wait_s=wait_s)
    for watcher in _WATCHERS:
        watcher.stopped.set()
    kill_all(procs)
    if failed is not None:
        raise OtherRankFailed(*failed)
