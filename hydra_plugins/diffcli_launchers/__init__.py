"""diffcli's sweep launchers for Hydra (``hydra/launcher=slurm | local`` of ``diffcli train``):
hydra-submitit-launcher's, with one-line failures
(:class:`diffcli.workflows.launchers.OneLineFailures`)."""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    LocalLauncher as SubmititLocalLauncher,
)
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)

from diffcli.workflows.launchers import OneLineFailures


class SlurmLauncher(OneLineFailures, SubmititSlurmLauncher):
    """One job-array task per sweep point on SLURM (``diffcli train -m`` checks sbatch and the
    device counts first: :func:`diffcli.workflows.launchers.check_launcher`)."""


class LocalLauncher(OneLineFailures, SubmititLocalLauncher):
    """The sweep's jobs as processes on this machine, as SLURM would run them."""


__all__ = ["LocalLauncher", "SlurmLauncher"]
