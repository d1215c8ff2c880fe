"""``guide=`` (autoguidance, Karras et al. 2024) through ``diffcli sample`` and ``diffcli.load``:
the model as its own guide is the unguided model bit for bit, a weaker guide changes the samples
and is recorded, and guides that do not fit are refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import POINTS_RUN, copy_points_run
from test_cli import run_here

SAMPLE = ["steps=4", "n=8", "sampler=ddim"]


def _samples(folder: Path) -> np.ndarray:
    return np.load(folder / "samples.npz")["points"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, points_checkpoint: Path) -> tuple[Path,
                                                                                          Path]:
    """(main, guide): a 6-step run and the shared 2-step run of the same data as its guide."""
    cwd = tmp_path_factory.mktemp("autoguide")
    run_here(cwd, "train", *[a for a in POINTS_RUN if "max_steps" not in a],
             "trainer.max_steps=6")
    return next(cwd.glob("outputs/*/*/checkpoints/last.ckpt")), points_checkpoint


def test_the_model_as_its_own_guide_is_the_model(two_runs, tmp_path: Path):
    main, _ = two_runs
    ckpt = copy_points_run(main, tmp_path)
    run_here(tmp_path, "sample", f"ckpt={ckpt}", *SAMPLE)
    run_here(tmp_path, "sample", f"ckpt={ckpt}", f"guide={ckpt}", "guidance=3", *SAMPLE)
    samples = ckpt.parent.parent / "samples"
    assert np.array_equal(_samples(samples / "ddim-4"), _samples(samples / "ddim-4-ag3"))


def test_a_weaker_guide_changes_the_samples_and_is_recorded(two_runs, tmp_path: Path):
    import json

    import diffcli

    main, weak = two_runs
    ckpt = copy_points_run(main, tmp_path)
    proc = run_here(tmp_path, "sample", f"ckpt={ckpt}", f"guide={weak}", "guidance=2", *SAMPLE)
    folder = next(ckpt.parent.parent.glob("samples/*-ag2"))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["guide"] == str(weak) and meta["guidance"] == 2.0, proc.stderr
    pipe = diffcli.load(ckpt)
    plain = pipe.sample(8, sampler="ddim", steps=4, output="float")
    guided = pipe.sample(8, sampler="ddim", steps=4, output="float", guide=str(weak),
                         guidance=2.0)
    assert np.allclose(guided.numpy(), _samples(folder), atol=1e-6)
    assert not np.allclose(plain.numpy(), guided.numpy())


def test_guides_that_do_not_fit_are_refused_in_one_line(two_runs, tmp_path: Path):
    main, weak = two_runs
    proc = run_here(tmp_path, "sample", f"ckpt={main}", f"guide={weak}", *SAMPLE, ok=False)
    assert proc.returncode != 0 and "needs guidance=w" in proc.stderr
    run_here(tmp_path, "train", "dataset=moons", *[a for a in POINTS_RUN if "dataset=" not in a])
    other = next(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt"))
    proc = run_here(tmp_path, "sample", f"ckpt={main}", f"guide={other}", "guidance=2", *SAMPLE,
                    ok=False)
    assert proc.returncode != 0 and "was trained on other data" in proc.stderr
    assert "Traceback" not in proc.stderr
