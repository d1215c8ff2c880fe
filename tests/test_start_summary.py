"""What `diffcli train` says as it starts: the precision it trains in on a CPU (and why)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from omegaconf import open_dict

from diffcli.checkpoint import CheckpointReads
from diffcli.cli import CONF_DIR
from diffcli.lit.callbacks import GracefulStop
from diffcli.lit.precision import bf16_in_cpuinfo, cpu_has_bf16, train_precision

NO_BF16 = "no bf16 instructions"
LIGHTNING_WARNING = "AMP with fp16 is not supported on CPU"


@pytest.mark.parametrize("asked,on_cpu,bf16,expected,note", [
    ("16-mixed", True, False, "32-true", NO_BF16),
    (16, True, False, "32-true", NO_BF16),
    ("bf16-mixed", True, False, "32-true", NO_BF16),
    ("bf16", True, False, "32-true", NO_BF16),
    ("bf16-true", True, False, "32-true", NO_BF16),
    ("16-true", True, False, "32-true", NO_BF16),
    ("16-mixed", True, True, "bf16-mixed", "Lightning's mapping"),
    ("bf16-mixed", True, True, "bf16-mixed", None),
    ("bf16-true", True, True, "bf16-true", None),
    ("16-true", True, True, "16-true", "fp16 is emulated"),
    ("32", True, False, "32-true", None),
    (64, True, False, "64-true", None),
    ("16-mixed", False, False, "16-mixed", None),
    ("bf16-mixed", False, False, "bf16-mixed", None),
    ("bf16", False, False, "bf16-mixed", None),
    ("transformer-engine", False, False, "transformer-engine", None),
])
def test_precision_on_a_cpu(asked, on_cpu, bf16, expected, note):
    precision, said = train_precision(asked, on_cpu, bf16)
    assert precision == expected
    if note is None:
        assert said is None
    else:
        assert said.startswith(f"trainer.precision={asked}: ") and note in said
        assert f"training in {expected}" in said or expected == asked


X86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse avx2 avx512f avx512bw {}\n"


@pytest.mark.parametrize("text,has", [
    (X86.format("avx512_bf16") * 2, True),
    (X86.format("amx_tile amx_bf16"), True),
    (X86.format("avx512_vnni"), False),
    (X86.format("avx512_bf16x"), False),  # a whole flag, not a prefix
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm (ARMv8.6)
    ("processor\t: 0\nFeatures\t: fp asimd sve\n", False),
    ("model name\t: bf16 avx512_bf16 marketing\n", False),  # only flags / Features count
    ("", False),
])
def test_bf16_in_cpuinfo(text, has):
    assert bf16_in_cpuinfo(text) is has


def test_cpu_has_bf16_reads_the_cpuinfo_file(tmp_path: Path):
    (tmp_path / "yes").write_text(X86.format("avx512_bf16"))
    (tmp_path / "no").write_text(X86.format("avx512_vnni"))
    assert cpu_has_bf16(tmp_path / "yes") and not cpu_has_bf16(tmp_path / "no")


def test_trainer_precision_note_and_the_users_summary_flags(monkeypatch, capsys, tmp_path):
    """On a CPU without bf16 ``16-mixed`` trains in 32-true and says so; a user's
    enable_model_summary / enable_progress_bar win over diffcli's False."""
    from diffcli.workflows import training

    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=moons", "model=mlp", "logger=none",
                                          "trainer.precision=16-mixed", "trainer.accelerator=cpu",
                                          "callbacks.preview=null", "trainer.max_steps=2"])
    trainer = training._trainer(cfg, tmp_path, GracefulStop(), CheckpointReads())
    assert trainer.precision == "32-true"
    assert not any(isinstance(c, (ModelSummary, ProgressBar)) for c in trainer.callbacks)
    assert capsys.readouterr().err.strip() == (
        "note: trainer.precision=16-mixed: CPUs have no fp16 autocast (Lightning would train in "
        "bf16-mixed) and this CPU has no bf16 instructions (half precision is emulated there, "
        "many times slower than fp32): training in 32-true")
    with open_dict(cfg):
        cfg.trainer.enable_model_summary = cfg.trainer.enable_progress_bar = True
    trainer = training._trainer(cfg, tmp_path, GracefulStop(), CheckpointReads())
    assert {ModelSummary, ProgressBar} <= {base for c in trainer.callbacks
                                           for base in type(c).__mro__}
