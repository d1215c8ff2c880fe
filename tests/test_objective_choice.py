"""The default objective is flow matching (issue 27); a DDPM-chain setting given without an
objective selects the chain, with one line saying so; a chain checkpoint resumed without it says
which override continues it."""

from __future__ import annotations

import pytest
from test_bad_inputs import run_in_process
from test_conditional_cli import train_runs

from diffcli.cli.objective_choice import chain_settings, implied_objective

MOONS = ["dataset=moons", "dataset.n_points=256", "logger=none", "trainer.max_steps=2",
         "model=mlp", "callbacks.preview=null"]


@pytest.mark.parametrize("given, chain", [
    (["schedule=cosine"], ["schedule=cosine"]),
    (["schedule.num_timesteps=50"], ["schedule.num_timesteps=50"]),
    (["module.prediction=eps"], ["module.prediction=eps"]),
    (["+module.min_snr_gamma=5"], ["module.min_snr_gamma=5"]),
    (["loss=hybrid", "model.learn_sigma=true"], ["loss=hybrid", "model.learn_sigma=true"]),
    (["loss=simple", "model.learn_sigma=false", "module.min_snr_gamma=null"], []),
    (["module.ema_decay=0.9", "model=mlp", "scheduled=1"], []),
])
def test_chain_settings_are_the_ones_only_the_chain_reads(given, chain):
    assert chain_settings(given) == chain


def test_a_chain_setting_without_an_objective_selects_the_chain():
    args, note = implied_objective("train", ["dataset=moons", "schedule=cosine"])
    assert args == ["objective=ddpm", "dataset=moons", "schedule=cosine"]
    assert note.startswith("note: schedule=cosine is a setting of the DDPM chain")
    for kept in (["schedule=cosine", "objective=edm"], ["schedule=cosine", "experiment=x"],
                 ["dataset=moons"], ["--cfg", "job", "model=mlp"]):
        assert implied_objective("train", kept) == (kept, None)
    assert implied_objective("sample", ["schedule=cosine"]) == (["schedule=cosine"], None)


def test_the_default_is_flow_and_a_schedule_trains_the_chain(tmp_path, monkeypatch, capsys):
    from diffcli.checkpoint import load_checkpoint

    runs = train_runs(tmp_path, {"plain": ["train", *MOONS],
                                 "cosine": ["train", *MOONS, "schedule=cosine"],
                                 "chain": ["train", *MOONS, "objective=ddpm"]})
    assert type(load_checkpoint(runs["plain"]).objective()).__name__ == "Flow"
    assert type(load_checkpoint(runs["cosine"]).objective()).__name__ == "DDPM"
    code, lines = run_in_process(["train", *MOONS, "trainer.max_steps=4",
                                  f"ckpt_path={runs['chain']}"], tmp_path, monkeypatch, capsys)
    assert code == 1 and len(lines) == 1, lines
    assert "objective._target_" in lines[0] and "(objective=ddpm continues the DDPM chain)" \
        in lines[0]


def test_flags_between_overrides_reach_hydra(tmp_path):
    """``--cfg job`` after one override and before another (and the ``objective=ddpm`` diffcli
    adds): Hydra's parser takes the overrides as one run, so they are passed after the flags."""
    from test_cli import run_here

    from diffcli.cli.overrides import flags_first

    assert flags_first(["a=1", "--cfg", "job", "b=2", "-p", "x", "--resolve"]) == \
        ["--cfg", "job", "-p", "x", "--resolve", "a=1", "b=2"]
    proc = run_here(tmp_path, "train", "model=mlp", "--cfg", "job", "schedule=cosine")
    assert "diffcli.diffusion.objectives.discrete.DDPM" in proc.stdout
    assert "cosine" in proc.stdout and "note: schedule=cosine" in proc.stderr
    assert not (tmp_path / "outputs").exists()
