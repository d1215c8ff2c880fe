"""Conditional models and guidance from the command line, on tiny runs trained here.

Runs (a few steps each, in this process): a class-conditional MLP on moons (2 classes), an
unconditional one, a noise-aware classifier of moons, one of the Gaussian mixture (other data),
and a class-conditional U-Net on the 8x8 digits. Then: guided sampling writes what it says,
eval-fid sweeps the guidance scale, noise-viz draws the guided reverse process, and every
misuse is one line, non-zero, with nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import _digest, run_in_process
from test_cli import TINY_UNET

MOONS = ["dataset=moons", "dataset.n_points=256", "logger=none", "trainer.max_steps=20"]
RUNS = {
    "cond": ["train", *MOONS, "model=mlp", "conditional=true", "callbacks.preview=null"],
    "uncond": ["train", *MOONS, "model=mlp", "callbacks.preview=null"],
    "clf": ["train", "task=classifier", *MOONS, "model=mlp_classifier"],
    "clf_other": ["train", "task=classifier", "dataset=gaussian_mixture", "dataset.n_points=256",
                  "logger=none", "trainer.max_steps=2", "model=mlp_classifier"],
    "digits": ["train", "conditional=true", *TINY_UNET, "model.channel_mults=[1]",
               "logger=none", "trainer.max_steps=2", "callbacks.preview=null"],
}


def train_runs(cwd: Path, runs: dict[str, list[str]]) -> dict[str, Path]:
    """Train each run of ``runs`` (name -> CLI arguments) in this process under ``cwd``:
    name -> its last checkpoint, and "cwd"."""
    monkeypatch = pytest.MonkeyPatch()
    out = {"cwd": cwd}
    try:
        for name, args in runs.items():
            _train(args + [f"hydra.run.dir={cwd / name}"], cwd, monkeypatch)
            out[name] = cwd / name / "checkpoints" / "last.ckpt"
    finally:
        monkeypatch.undo()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """name -> checkpoint of each run of :data:`RUNS` (and "cwd": where they were made)."""
    return train_runs(tmp_path_factory.mktemp("conditional"), RUNS)


def _train(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from conftest import fresh_hydra

    from diffcli.cli import app

    fresh_hydra()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["diffcli"])
    with pytest.raises(SystemExit) as info:
        app(args)
    assert info.value.code in (0, None), args


def test_classifier_training_reports_accuracy_per_t(runs, monkeypatch, capsys):
    code, lines = run_in_process([*RUNS["clf"], "trainer.max_steps=1",
                                  f"hydra.run.dir={runs['cwd'] / 'clf2'}"], runs["cwd"],
                                 monkeypatch, capsys)
    assert code in (0, None)
    text = " ".join(lines)
    assert "classifier accuracy on 256 noised images" in text and "t 750-999:" in text
    assert "diffcli sample" in text and "classifier=" in text


def test_guided_sampling_writes_classes_scale_and_nfe(runs, monkeypatch, capsys):
    args = ["sample", f"ckpt={runs['cond']}", "sampler=ddim", "steps=4", "n=8", "guidance=3",
            "classes=0-1"]
    code, lines = run_in_process(args, runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    out = runs["cond"].parent.parent / "samples" / "ddim-4-w3"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["guidance"] == 3 and meta["classes"] == [0, 1]
    assert meta["class_names"] == ["upper", "lower"]
    assert meta["nfe"] == 8  # both halves of the 2B forward count
    assert np.load(out / "samples.npz")["labels"].tolist() == [0] * 4 + [1] * 4


def test_guidance_one_is_one_forward_and_classifier_guidance_runs(runs, monkeypatch, capsys):
    code, lines = run_in_process(["sample", f"ckpt={runs['cond']}", "sampler=ddim", "steps=4",
                                  "n=4", "guidance=1", "classes=1"], runs["cwd"], monkeypatch,
                                 capsys)
    assert code in (0, None), lines
    meta = json.loads((runs["cond"].parent.parent / "samples" / "ddim-4-w1" /
                       "meta.json").read_text())
    assert meta["nfe"] == 4
    code, lines = run_in_process(["sample", f"ckpt={runs['uncond']}", "sampler=heun", "steps=3",
                                  "sampler.max_ratio=null",  # 2N - 1 evaluations
                                  "n=4", f"classifier={runs['clf']}", "classifier_scale=2",
                                  "classes=0"], runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    meta = json.loads(next((runs["uncond"].parent.parent / "samples").glob(
        "heun-3-cls2/meta.json")).read_text())
    assert meta["classifier_scale"] == 2 and meta["classes"] == [0] and meta["nfe"] == 5


def test_class_grid_has_one_row_per_class(runs, monkeypatch, capsys):
    from PIL import Image

    code, lines = run_in_process(["sample", f"ckpt={runs['digits']}", "sampler=ddim", "steps=2",
                                  "n=6", "guidance=2", "classes=[3,5,7]"], runs["cwd"],
                                 monkeypatch, capsys)
    assert code in (0, None), lines
    out = runs["digits"].parent.parent / "samples" / "ddim-2-w2"
    width, height = Image.open(out / "grid.png").size
    assert width * 28 == height * 19  # 3 rows of 2 8x8 images, 1-pixel padding: 19 x 28
    assert np.load(out / "samples.npz")["labels"].tolist() == [3, 3, 5, 5, 7, 7]


def test_uneven_n_is_rounded_up_to_a_full_row_per_class(runs, monkeypatch, capsys):
    import diffcli

    code, lines = run_in_process(["sample", f"ckpt={runs['digits']}", "sampler=ddim", "steps=1",
                                  "n=7", "guidance=2", "classes=[3,5,7]"],
                                 runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    note = "note: n=7 rounded up to 9 so each of the 3 classes gets 3 samples"
    assert lines.count(note) == 1 and lines.index(note) < len(lines) - 1, lines
    out = runs["digits"].parent.parent / "samples" / "ddim-1-w2"
    assert np.load(out / "samples.npz")["labels"].tolist() == [3] * 3 + [5] * 3 + [7] * 3
    assert json.loads((out / "meta.json").read_text())["n"] == 9
    pipe = diffcli.load(runs["cond"])  # the Python API: the same rule, seeds given are kept
    assert len(pipe.sample(3, sampler="ddim", steps=1, classes=[0, 1])) == 4
    assert len(pipe.sample(sampler="ddim", steps=1, seeds=[4, 5, 6], classes=[0, 1])) == 3


def test_eval_fid_sweeps_the_guidance_scale(runs, monkeypatch, capsys):
    args = ["eval-fid", f"ckpt={runs['digits']}", "guidance=[0,2]", "n=8", "ref_n=16",
            "extractor=standin", "sampler=ddim", "steps=2", "batch_size=8", "cache=false"]
    code, lines = run_in_process(args, runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    sweep = next((runs["digits"].parent.parent / "eval").glob("*-guidance-sweep.json"))
    rows = json.loads(sweep.read_text())["rows"]
    assert [r["guidance"] for r in rows] == [0, 2] and all(r["fid"] > 0 for r in rows)
    assert sweep.with_suffix(".png").is_file()


def test_noise_viz_draws_the_guided_process_next_to_the_unguided(runs, monkeypatch, capsys):
    args = ["noise-viz", f"ckpt={runs['digits']}", "guidance=3", "classes=7", "steps=3",
            "num_images=1", "image_size=8", "sampler=ddim", "reverse_columns=2"]
    code, lines = run_in_process(args, runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    assert (runs["digits"].parent.parent / "viz" / "reverse.png").is_file()


def _misuse(runs: dict[str, Path]) -> list[tuple[list[str], str, int]]:
    cond, uncond, clf = (str(runs[k]) for k in ("cond", "uncond", "clf"))
    return [
        (["sample", f"ckpt={cond}", "classes=12"], "this model has classes 0-1 (0=upper", 2),
        (["sample", f"ckpt={cond}", "classes=abc"], "bad classes='abc'", 2),
        (["sample", f"ckpt={cond}", "n=1", "classes=0-1"], "fewer than the 2 classes", 2),
        (["sample", f"ckpt={uncond}", "guidance=2"], "needs a class-conditional model", 2),
        (["sample", f"ckpt={uncond}", "classes=1"], "classifier=<ckpt>", 2),
        (["sample", f"ckpt={uncond}", "classifier_scale=2"], "classifier_scale needs", 2),
        (["sample", f"ckpt={uncond}", f"classifier={cond}"], "not a classifier", 2),
        (["sample", f"ckpt={uncond}", f"classifier={runs['clf_other']}"], "other data", 2),
        (["sample", f"ckpt={clf}"], "pass this one as classifier=", 2),
        (["sample", f"ckpt={cond}", "guidance=-1"], "guidance=-1", 2),
        (["sample", f"ckpt={cond}", "guidance_rescale=2"], "guidance_rescale", 2),
        (["eval-fid", f"ckpt={uncond}", "guidance=[0,2]"], "needs a class-conditional", 2),
        (["train", "conditional=true", "dataset=swiss_roll", "model=mlp"], "has no labels", 2),
        (["train", "task=classifier", "dataset=swiss_roll"], "has no labels", 2),
        (["train", "model.num_classes=3"], "model.num_classes is set from the dataset", 2),
        (["train", "task=regression"], "task", 2),
    ]


def assert_refused(cases: list[tuple[list[str], str, int]], cwd: Path, monkeypatch,
                   capsys) -> None:
    """Each case: the exit code, exactly one ``error:`` line holding the fragment, and no file
    under ``cwd`` written or changed."""
    before = _digest(cwd)
    for args, fragment, code in cases:
        got, lines = run_in_process(args, cwd, monkeypatch, capsys)
        assert got == code, (args, lines)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, lines)
        assert fragment in lines[0], (args, lines[0])
    assert _digest(cwd) == before


def test_misuse_is_one_line_and_writes_nothing(runs, monkeypatch, capsys):
    assert_refused(_misuse(runs), runs["cwd"], monkeypatch, capsys)


def test_guidance_of_a_model_with_learned_variances(tmp_path, monkeypatch, capsys):
    """Classifier-free guidance splits a learn_sigma net's 2C outputs (guide() passes the
    model's learned_variance on; the guided prediction halves, the conditional variance)."""
    run = train_runs(tmp_path, {"sigma": ["train", *MOONS, "model=mlp", "conditional=true",
                                          "model.learn_sigma=true", "loss=hybrid",
                                          "trainer.max_steps=2", "callbacks.preview=null"]})
    code, lines = run_in_process(["sample", f"ckpt={run['sigma']}", "sampler=ddpm", "steps=4",
                                  "n=8", "guidance=2", "classes=0-1"], tmp_path, monkeypatch,
                                 capsys)
    assert code in (0, None), lines
    data = np.load(run["sigma"].parent.parent / "samples" / "ddpm-4-w2" / "samples.npz")
    assert data["points"].shape == (8, 2) and np.isfinite(data["points"]).all()
