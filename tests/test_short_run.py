"""Quiet surprises of short runs, said in one line: the training notes (LR warm-up and callback
intervals longer than the run, :mod:`diffcli.workflows.short_run`) and classes split evenly
over the samples (:mod:`diffcli.guided_run`). The notes of a real ``diffcli train`` process are
checked in ``test_cli.py::test_train_and_sample_images``, a real class grid in
``test_conditional_cli.py::test_uneven_n_is_rounded_up_to_a_full_row_per_class``."""

from __future__ import annotations

from collections import Counter

from omegaconf import OmegaConf

from diffcli.cli import CONF_DIR
from diffcli.components import COMPONENTS
from diffcli.guided_run import GuidedRun, class_labels, even_count
from diffcli.workflows.short_run import (
    NEVER_FIRES,
    run_steps,
    short_run_notes,
    step_intervals,
    steps_per_epoch,
)

CALLBACKS = CONF_DIR / "callbacks"
PREVIEW = {"callbacks.preview.every_n_steps": (1000, "no preview will be written")}


def test_a_warm_up_longer_than_the_run_is_said_with_a_length_that_fits():
    assert short_run_notes(60, 100, {}) == [
        "lr_scheduler.warmup_steps=100 is longer than the run (60 steps): the LR never reaches "
        "optimizer.lr; set lr_scheduler.warmup_steps=6 (about 10% of the run) or fewer"]
    assert short_run_notes(100, 100, {}) == []  # the last step runs at the peak rate
    assert short_run_notes(60, 0, {}) == short_run_notes(60, None, {}) == []


def test_an_interval_no_step_reaches_is_said_once_per_callback():
    assert short_run_notes(300, 100, PREVIEW) == [
        "callbacks.preview.every_n_steps=1000 is longer than the run (300 steps): no preview "
        "will be written; set callbacks.preview.every_n_steps=100"]
    assert short_run_notes(3000, 100, PREVIEW) == []
    assert short_run_notes(1000, 100, PREVIEW) == []  # fires at the last step
    # a resumed run: steps 251..300 reach 300, steps 211..290 reach no multiple of 100
    every_100 = {"callbacks.preview.every_n_steps": (100, "no preview will be written")}
    assert short_run_notes(300, 10, every_100, start=250) == []
    assert short_run_notes(290, 10, every_100, start=210) == [
        "callbacks.preview.every_n_steps=100 is reached by no step of the run (211-290): no "
        "preview will be written; set callbacks.preview.every_n_steps=26"]


def test_runs_of_unknown_length_get_no_note_and_time_bounded_ones_say_at_most():
    assert short_run_notes(None, 100, PREVIEW) == []  # trainer.max_time alone
    notes = short_run_notes(50, 100, PREVIEW, timed=True)
    assert len(notes) == 2 and all("(at most 50 steps)" in n for n in notes)


def test_the_length_of_a_run_from_its_step_and_epoch_limits():
    assert steps_per_epoch(10_000, 512) == 19  # the short last batch is dropped
    assert steps_per_epoch(10_000, 512, world=2) == 9
    assert steps_per_epoch(10_000, 512, accumulate=2) == 10  # the epoch's last batch steps
    assert steps_per_epoch(10_000, 512, limit=5) == 5
    assert steps_per_epoch(10_000, 512, limit=0.5) == 9
    assert steps_per_epoch(10_000, 512, limit=1.0, drop_last=False) == 20
    assert run_steps(5, -1, 19) == 5
    assert run_steps(-1, 2, 19) == 38
    assert run_steps(50, 1, 19) == 19
    assert run_steps(-1, -1, 19) is None


def test_the_callbacks_whose_intervals_are_checked():
    assert set(NEVER_FIRES) == set(COMPONENTS["callbacks"])  # a new callback says what it writes
    default = OmegaConf.to_container(OmegaConf.load(CALLBACKS / "default.yaml"))
    assert step_intervals(default) == PREVIEW  # last.ckpt is saved at the end anyway; others off
    default["snapshot"]["every_n_steps"] = 500
    assert step_intervals(default)["callbacks.snapshot.every_n_steps"] == (
        500, "no checkpoints/step-N.ckpt will be kept")
    auto = OmegaConf.to_container(OmegaConf.load(CALLBACKS / "autoencoder.yaml"))
    assert step_intervals(auto) == {"callbacks.reconstructions.every_n_steps": (
        1000, "no reconstruction grid will be written")}


def test_classes_split_evenly_and_n_is_rounded_up_to_a_full_row_each():
    assert Counter(class_labels(range(10), 70).tolist()) == {c: 7 for c in range(10)}
    labels = class_labels(range(10), 64).tolist()  # n as given: no class is left out
    assert labels == sorted(labels) and Counter(labels) == {**{c: 7 for c in range(4)},
                                                            **{c: 6 for c in range(4, 10)}}
    assert even_count(64, 10) == 70 and even_count(70, 10) == 70
    guided = GuidedRun(denoiser=None, classes=list(range(10)), class_names=None, meta={})
    seeds, note = guided.even_seeds(list(range(5, 69)), given=False)
    assert seeds == list(range(5, 75))
    assert note == "n=64 rounded up to 70 so each of the 10 classes gets 7 samples"
    seeds, note = guided.even_seeds(list(range(64)), given=True)  # seeds= one by one: kept
    assert seeds == list(range(64)) and note == (
        "64 seeds over 10 classes: 4 of them get 7 samples, 6 get 6; give a multiple of 10 "
        "seeds for one grid row each")
    assert guided.even_seeds(list(range(70)), given=False) == (list(range(70)), None)
    assert guided.even_seeds([1, 2], given=False) == ([1, 2], None)  # fewer: refused later
    unguided = GuidedRun(denoiser=None, classes=None, class_names=None, meta={})
    assert unguided.even_seeds(list(range(64)), given=False) == (list(range(64)), None)
