"""What a run trained, chosen once: a diffusion model, an autoencoder or a noise-aware
classifier (``diffcli train task=...``).

Each is one small :class:`Task` object that says what the run can do - draw new samples,
encode to and decode from a latent space, classify noisy data - what it needs (labels, text,
a latent space) and how to tell a user who handed it to the wrong command. Code elsewhere asks
the object (``task_of(run).generates``), never compares the task's name: this module is the
only place that maps a name to its object. Pure data: imports nothing of diffcli.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Task:
    """One kind of run and what it is good for."""

    name: str  # the value of ``task=`` (and of a checkpoint's config ``task``)
    noun: str  # "a diffusion model": how messages name it
    generates: bool = False  # draws new samples (sample, eval-fid, eval-nll, noise-viz, export)
    encodes: bool = False  # an autoencoder: a latent space, reconstructions
    classifies: bool = False  # a classifier of noisy data (classifier guidance)
    takes_text: bool = False  # may be conditioned on captions (text_encoder=)
    takes_latent: bool = False  # may be trained in an autoencoder's latent space (latent=)
    labels: str | None = None  # why it needs a labelled dataset, when it always does
    use: str = ""  # what to do with such a run instead of sampling from it

    @property
    def run_label(self) -> str:
        """"trained run" (a diffusion run), "classifier run", ...: how run searches name it."""
        return "trained run" if self.generates else f"{self.name} run"

    @property
    def train_command(self) -> str:
        """The command that trains one."""
        return "diffcli train" if self.generates else f"diffcli train task={self.name}"

    def not_generative(self, path: Path | str) -> str:
        """One line for a ``path`` of this task handed to a command that samples."""
        return (f"{path} is {self.noun} (task={self.name}), not a diffusion model: "
                + self.use.format(path=path))


DIFFUSION = Task("diffusion", "a diffusion model", generates=True, takes_text=True,
                 takes_latent=True)
AUTOENCODER = Task("autoencoder", "an autoencoder", encodes=True,
                   use="train latent diffusion on it with `diffcli train latent={path}`")
CLASSIFIER = Task("classifier", "a noise-aware classifier", classifies=True,
                  labels="task=classifier",
                  use="sample from a diffusion run and pass this one as classifier={path}")

TASKS: dict[str, Task] = {t.name: t for t in (DIFFUSION, CLASSIFIER, AUTOENCODER)}


def task_named(name: object) -> Task:
    """The task of ``task=<name>`` (unknown names are refused by the config's schema and by
    :func:`diffcli.checkpoint.load_checkpoint` before they get here)."""
    return TASKS[str(name or DIFFUSION.name)]
