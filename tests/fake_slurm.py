"""A fake SLURM cluster for tests: ``sbatch``, ``srun``, ``scontrol``, ``sacct`` and ``squeue``
on PATH.

:func:`install` writes these commands into a folder (put it first on PATH); they keep their
state in ``$FAKE_SLURM_DIR``. The cluster has one partition, ``debug``.

* ``sbatch <script>`` prints "Submitted batch job N" and runs the script's ``srun`` line in the
  background, once per job-array task, with the SLURM_* variables a task gets (the output
  paths' %A, %a, %j, %t filled in). A task whose ``scontrol requeue`` was recorded while it
  ran is started again with SLURM_RESTART_COUNT one higher.
* ``FAKE_SLURM_PREEMPT="<task>:<text>"`` sends USR1 to that array task's first attempt once
  its stderr log contains ``<text>`` (the time limit's ``--signal=USR1@...``).
* ``scontrol requeue <job>`` is appended to ``$FAKE_SLURM_DIR/scontrol.log``.
* ``sacct`` / ``squeue`` report the tasks' states.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

COMMANDS = ("sbatch", "srun", "scontrol", "sacct", "squeue")


def install(bin_dir: Path, state_dir: Path) -> dict[str, str]:
    """Write the fake commands into ``bin_dir``; returns the environment to run under."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} {name} "
                        '"$@"\n')
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_SLURM_DIR": str(state_dir)}


def _state() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def sbatch(args: list[str]) -> int:
    script = Path(args[-1]).read_text()
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, re.MULTILINE))
    if opts.get("partition", "debug") != "debug":
        print(f"sbatch: error: invalid partition specified: {opts['partition']}", file=sys.stderr)
        print("sbatch: error: Batch job submission failed: Invalid partition name specified",
              file=sys.stderr)
        return 1
    counter = _state() / "next-job"
    job = int(counter.read_text()) if counter.exists() else 5000
    counter.write_text(str(job + 1))
    print(f"Submitted batch job {job}", flush=True)
    subprocess.Popen([sys.executable, __file__, "run", str(job), args[-1]],
                     start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return 0


def _tasks(opts: dict[str, str]) -> list[int | None]:
    array = opts.get("array")
    if not array:
        return [None]
    first, last = array.split("%")[0].split("-")
    return list(range(int(first), int(last) + 1))


def _requeues(key: str) -> int:
    log = _state() / "scontrol.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return sum(line.split() == ["requeue", key] for line in lines)


def _fill(pattern: str, job: int, task: int | None) -> str:
    """An --output / --error pattern with %A, %a, %j, %t filled in."""
    fill = {"%A": str(job), "%a": str(task), "%j": str(job), "%t": "0"}
    return re.sub("|".join(fill), lambda m: fill[m.group(0)], pattern)


def _run_task(job: int, task: int | None, srun: list[str], preempt: str) -> None:
    key = f"{job}_{task}" if task is not None else str(job)
    restarts = 0
    while True:
        env = {**os.environ, "SLURM_JOB_ID": str(job + 1 + (task or 0)), "SLURM_NTASKS": "1",
               "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
               "SLURM_JOB_NAME": "diffcli", "SLURM_JOB_NODELIST": "localhost",
               "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NUM_NODES": "1",
               "SLURM_RESTART_COUNT": str(restarts)}
        if task is not None:
            env |= {"SLURM_ARRAY_JOB_ID": str(job), "SLURM_ARRAY_TASK_ID": str(task)}
        out, err = (_fill(srun[srun.index(f) + 1], job, task)  # SLURM fills in these two only
                    for f in ("--output", "--error"))
        command = srun[srun.index("--error") + 2:]
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        (_state() / f"{key}.state").write_text("RUNNING")
        with open(out, "a") as fo, open(err, "a") as fe:
            proc = subprocess.Popen(command, stdout=fo, stderr=fe, env=env)
            if preempt and restarts == 0 and preempt.split(":", 1)[0] == str(task):
                _preempt_when(proc, Path(err), preempt.split(":", 1)[1])
            code = proc.wait()
        if _requeues(key) > restarts:
            restarts += 1
            continue
        (_state() / f"{key}.state").write_text("COMPLETED" if code == 0 else "FAILED")
        return


def _preempt_when(proc: subprocess.Popen, log: Path, text: str) -> None:
    while proc.poll() is None:
        if log.exists() and text in log.read_text():
            proc.send_signal(signal.SIGUSR1)
            return
        time.sleep(0.2)


def run(args: list[str]) -> int:
    job, script = int(args[0]), Path(args[1]).read_text()
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, re.MULTILINE))
    srun = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    srun = srun[1:]  # run the command itself: one task per array element
    os.environ.update(re.findall(r"^export (\w+)=(.*)$", script, re.MULTILINE))
    preempt = os.environ.get("FAKE_SLURM_PREEMPT", "")
    threads = [threading.Thread(target=_run_task, args=(job, t, srun, preempt))
               for t in _tasks(opts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


def srun(args: list[str]) -> int:
    """Outside a job script (which ``sbatch`` runs itself): run the command."""
    while args and args[0].startswith("-"):
        args = args[2:] if args[0] in ("--output", "--error") else args[1:]
    return subprocess.call(args)


def scontrol(args: list[str]) -> int:
    with open(_state() / "scontrol.log", "a") as f:
        f.write(" ".join(args) + "\n")
    return 0


def sacct(args: list[str]) -> int:
    print("JobID|State|NodeList")
    for f in sorted(_state().glob("*.state")):
        print(f"{f.stem}|{f.read_text()}|localhost")
    return 0


def squeue(args: list[str]) -> int:
    print("JOBID STATE")
    for f in sorted(_state().glob("*.state")):
        print(f"{f.stem} {f.read_text()}")
    return 0


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    commands = {"sbatch": sbatch, "srun": srun, "scontrol": scontrol, "sacct": sacct,
                "squeue": squeue, "run": run}
    sys.exit(commands[command](rest))
