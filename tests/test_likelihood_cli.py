"""Learned variances, L_hybrid / L_vlb training and `diffcli eval-nll`, from the command line.

Tiny runs trained here (in this process): moons with a learned-variance MLP under L_hybrid and
under L_vlb, moons with L_simple, and the 8x8 digits with a learned-variance U-Net.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_bad_inputs import run_in_process
from test_cli import TINY_UNET
from test_conditional_cli import assert_refused, train_runs

MOONS = ["dataset=moons", "dataset.n_points=256", "logger=none", "trainer.max_steps=20",
         "model=mlp", "callbacks.preview=null"]
RUNS = {
    "hybrid": ["train", *MOONS, "model.learn_sigma=true", "loss=hybrid"],
    "vlb": ["train", *MOONS, "model.learn_sigma=true", "loss=vlb"],
    "simple": ["train", *MOONS, "objective=ddpm"],
    "digits": ["train", *TINY_UNET, "model.channel_mults=[1]", "model.learn_sigma=true",
               "loss=hybrid", "logger=none", "trainer.max_steps=2", "callbacks.preview=null"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return train_runs(tmp_path_factory.mktemp("likelihood"), RUNS)


def _ok(args: list[str], runs: dict[str, Path], monkeypatch, capsys) -> list[str]:
    code, lines = run_in_process(args, runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    return lines


def test_vlb_training_keeps_the_importance_history(runs):
    state = torch.load(runs["vlb"], weights_only=True)["state_dict"]
    counts = state["importance.counts"]
    assert counts.shape == (1000,) and int(counts.max()) == 10  # full histories (10 values)
    assert 4000 < int(counts.sum()) <= 20 * 256  # 20 batches of 256 timesteps were recorded


def test_eval_nll_vlb_writes_bits_per_dim_an_interval_and_the_term_curve(runs, monkeypatch,
                                                                         capsys):
    _ok(["eval-nll", f"ckpt={runs['hybrid']}", "n=32", "steps=20", "batch_size=16"], runs,
        monkeypatch, capsys)
    out = runs["hybrid"].parent.parent / "eval"
    record = json.loads((out / "nll-vlb-train-n32.json").read_text())
    vlb = record["results"]["vlb"]
    assert vlb["variance"] == "learned" and vlb["decoder"] == "continuous"
    assert 10 < vlb["terms"] <= 20 and "estimate" in vlb["terms_chosen"]
    assert vlb["ci95_low"] < vlb["bits_per_dim"] < vlb["ci95_high"]
    assert math.isfinite(vlb["bits_per_dim"]) and record["n"] == 32
    assert (out / "vlb-terms-train-n32.png").is_file()


def test_eval_nll_ode_and_both(runs, monkeypatch, capsys):
    _ok(["eval-nll", f"ckpt={runs['simple']}", "n=4", "method=both", "steps=10", "rtol=1e-3",
         "atol=1e-3"], runs, monkeypatch, capsys)
    record = json.loads((runs["simple"].parent.parent / "eval" /
                         "nll-both-train-n4.json").read_text())
    assert set(record["results"]) == {"vlb", "ode"}
    assert record["results"]["vlb"]["variance"] == "beta_tilde"
    assert record["results"]["ode"]["nfe_per_solve"] > 2
    assert all(math.isfinite(r["bits_per_dim"]) for r in record["results"].values())


def test_images_use_the_discrete_decoder_and_learned_variance_sampling(runs, monkeypatch,
                                                                       capsys):
    _ok(["eval-nll", f"ckpt={runs['digits']}", "n=8", "steps=5"], runs, monkeypatch, capsys)
    record = json.loads(next((runs["digits"].parent.parent / "eval").glob(
        "nll-vlb-*.json")).read_text())
    assert record["results"]["vlb"]["decoder"] == "discrete"
    _ok(["sample", f"ckpt={runs['digits']}", "sampler=ddpm", "steps=5", "n=4",
         "sampler.variance=learned"], runs, monkeypatch, capsys)


def _misuse(runs: dict[str, Path]) -> list[tuple[list[str], str, int]]:
    return [
        (["eval-nll", f"ckpt={runs['hybrid']}", "decoder=discrete"], "decoder=discrete", 2),
        (["eval-nll", f"ckpt={runs['hybrid']}", "steps=0"], "steps=0", 2),
        (["eval-nll", f"ckpt={runs['simple']}", "variance=learned"], "no learned variances", 2),
        (["eval-nll", f"ckpt={runs['simple']}", "method=exact"], "method", 2),
        (["sample", f"ckpt={runs['simple']}", "sampler=ddpm", "sampler.variance=learned"],
         "sampler.variance=learned needs", 2),
        (["train", "loss=hybrid"], "set model.learn_sigma=true", 2),
        (["train", "model.learn_sigma=true"], "use loss=hybrid or loss=vlb", 2),
        (["train", "loss=vlb", "model.learn_sigma=true", "module.min_snr_gamma=5"],
         "min_snr_gamma", 2),
        (["train", "loss=hybrid", "model.learn_sigma=true", "loss.vlb_weight=-1"],
         "vlb_weight", 2),
    ]


def test_misuse_is_one_line_and_writes_nothing(runs, monkeypatch, capsys):
    assert_refused(_misuse(runs), runs["cwd"], monkeypatch, capsys)
