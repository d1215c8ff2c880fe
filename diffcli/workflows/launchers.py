"""Sweeps through hydra-submitit-launcher: the checks before a sweep is launched, and the
failures a person meets reported in one line.

``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml) submits one job-array task per
sweep point; ``hydra/launcher=local`` runs the same jobs as processes on this machine. The
launcher classes live in ``hydra_plugins.diffcli_launchers`` (Hydra instantiates launchers
from its plugin namespace only) and take their behaviour from :class:`OneLineFailures`: a
refused submission (a partition that does not exist, a bad account) is sbatch's own error
line; a failed job is its own ``error:`` line.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from diffcli.errors import DiffcliError

ERROR_LINE = re.compile(r"^(?:rank \d+: )?(?:error|interrupted): .*$", re.MULTILINE)


def check_sbatch() -> None:
    """Refuse ``hydra/launcher=slurm`` where there is no ``sbatch`` (or ``srun``) to submit
    with."""
    for tool in ("sbatch", "srun"):
        if shutil.which(tool) is None:
            raise DiffcliError(f"hydra/launcher=slurm submits with sbatch and srun, but "
                               f"{tool} is not on PATH: run the sweep on a SLURM login "
                               "node, or try it here with hydra/launcher=local")


def check_devices(config: Any, gpus_per_node: int | None, nodes: int) -> None:
    """One SLURM task per GPU is one DDP rank: ``trainer.devices`` and ``trainer.num_nodes``
    must say the same as the launcher, or Lightning stops every job at start-up."""
    trainer = config.get("trainer") or {}
    devices, num_nodes = trainer.get("devices"), trainer.get("num_nodes", 1)
    if gpus_per_node and str(devices) not in ("auto", "-1", str(gpus_per_node)):
        raise DiffcliError(f"hydra.launcher.gpus_per_node={gpus_per_node} but trainer.devices="
                           f"{devices}: each job runs one DDP rank per GPU, set both to the same")
    if int(num_nodes or 1) != int(nodes):
        raise DiffcliError(f"hydra.launcher.nodes={nodes} but trainer.num_nodes={num_nodes}: set "
                           "both to the same")


def check_launcher(cfg: Any) -> None:
    """Before a sweep is launched: hydra/launcher=slurm needs sbatch, and device counts that
    agree with the launcher's."""
    node = cfg.hydra.launcher
    try:  # (not submitit_folder: resolving the sweep folder would create it)
        launcher = {k: node[k] for k in node if k != "submitit_folder"}
    except Exception as e:  # noqa: BLE001 - OmegaConf's several errors: a bad launcher key
        raise DiffcliError(f"hydra.launcher: {' '.join(str(e).split())}") from None
    if str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        check_sbatch()
        check_devices(cfg, launcher.get("gpus_per_node"), int(launcher.get("nodes") or 1))


def failure_line(error: BaseException, first: bool = False) -> str:
    """The line worth showing of a submitit error: the job's own ``error: ...`` line when its
    log has one, else the first line (``first``: sbatch's own message) or the last (a
    traceback's exception)."""
    text = str(error)
    found = ERROR_LINE.findall(text)
    if found:
        return found[-1].split(": ", 1)[1] if found[-1].startswith("rank") else found[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if first else lines[-1]) if lines else type(error).__name__


class OneLineFailures:
    """Mixin: a failed submission or job is a :class:`DiffcliError` with one line."""

    _EXECUTOR: str
    config: Any

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        held = io.StringIO()  # submitit prints sbatch's stderr itself before raising
        try:
            with contextlib.redirect_stderr(held):
                return super().launch(job_overrides, initial_job_idx)  # type: ignore[misc]
        except Exception as e:
            message = launch_failure(e, f"{self.config.hydra.sweep.dir}/.submitit/")
            if message is None:
                raise
        finally:
            sys.stderr.write("".join(line for line in held.getvalue().splitlines(True)
                                     if "sbatch" not in line))
        sys.stderr.write(f"error: {message}\n")  # Hydra would print a traceback
        raise SystemExit(1)


def launch_failure(error: Exception, logs: str) -> str | None:
    """The one line for a sweep that could not be submitted or whose job failed (None for
    other errors: bugs keep their traceback)."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    if isinstance(error, FailedJobError) and not str(error).startswith("Job"):
        return f"sbatch refused the sweep: {failure_line(error, first=True)}"
    if isinstance(error, (FailedJobError, UncompletedJobError)):
        return f"a sweep job failed: {failure_line(error)} (logs: {logs})"
    return None


__all__ = ["OneLineFailures", "check_devices", "check_launcher", "check_sbatch",
           "failure_line", "launch_failure"]
