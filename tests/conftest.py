import os

# Torch's OpenMP threads spin-wait by default, which stalls badly on a busy 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: each worker (and each diffcli process it starts)
    # computes on one thread instead of two threads per worker fighting over both cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

POINTS_RUN = ["dataset=swiss_roll", "model=mlp", "trainer.max_steps=2", "dataset.n_points=200",
              "logger=none", "callbacks.preview=null"]


@pytest.fixture(scope="session")
def points_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny trained 2-D run per test process (``diffcli train`` in this process), for the
    tests that only need some valid checkpoint: its ``last.ckpt``. Read it, never write beside it
    (copy it with :func:`copy_points_run`)."""
    from test_cli import run_here

    cwd = tmp_path_factory.mktemp("points-checkpoint")
    run_here(cwd, "train", *POINTS_RUN)
    return next(cwd.glob("outputs/*/*/checkpoints/last.ckpt"))


def copy_points_run(checkpoint: Path, cwd: Path) -> Path:
    """A copy of the run folder of ``checkpoint`` as ``cwd/outputs/<date>/<time>``, so that
    commands that look for the newest run in ``cwd`` find it; returns the copy's last.ckpt."""
    run_dir = checkpoint.parent.parent
    copy = cwd / "outputs" / run_dir.parent.name / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy / "checkpoints" / checkpoint.name


def fresh_hydra() -> None:
    """Hydra's global state as in a new process, for the entry point run in this one (a sweep
    run in-process leaves its config set, and the next command's checks would resolve
    ``${hydra:...}`` against it)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None

