"""What `diffcli train` says as it starts: the precision it trains in on a CPU (and why), and the
start summary (groups, parameters per module). Pure functions in this process; one real run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from omegaconf import OmegaConf, open_dict
from rich.text import Text
from test_cli import run
from torch import nn

from diffcli.checkpoint import CheckpointReads
from diffcli.cli import CONF_DIR
from diffcli.components import build_net
from diffcli.lit.callbacks import GracefulStop
from diffcli.lit.precision import bf16_in_cpuinfo, cpu_has_bf16, train_precision
from diffcli.nets.layers import count_parameters
from diffcli.tasks import task_named
from diffcli.workflows.start_summary import StartFacts, parameter_rows, start_lines

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


@pytest.mark.parametrize("bf16", [True, False])
def test_a_gpu_default_is_32_on_a_cpu(bf16):
    """trainer=ddp's bf16-mixed (a group default, not asked for) trains in 32 on any CPU."""
    precision, said = train_precision("bf16-mixed", True, bf16, asked=False)
    assert precision == "32-true" and "the trainer group's default for GPUs" in said
    assert train_precision("bf16-mixed", False, bf16, asked=False) == ("bf16-mixed", None)


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


class Shared(nn.Module):
    """Two children sharing one layer, a frozen child, a child without parameters, and a
    parameter of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Sequential(nn.ReLU(), self.a, nn.Linear(4, 2))
        self.act = nn.SiLU()
        self.frozen = nn.Linear(2, 2).requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(5))


def test_parameter_rows_add_up_to_the_total_exactly():
    rows = parameter_rows(Shared())
    assert rows == [("a", 16), ("b", 10), ("frozen (frozen)", 6), ("(own)", 5)]
    assert sum(c for _, c in rows) == count_parameters(Shared()) == 37
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["model.attention_levels=[1]"])
    unet = build_net(cfg.model, (1, 8, 8))
    rows = parameter_rows(unet)
    assert [n for n, _ in rows] == [n for n, c in unet.named_children() if count_parameters(c)]
    assert sum(c for _, c in rows) == count_parameters(unet)


def plain(lines: list[str]) -> list[str]:
    return [Text.from_markup(line).plain for line in lines]


def test_start_summary_names_each_group_and_its_main_keys(tmp_path: Path):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=moons", "model=mlp", "logger=none",
                                          "optimizer=adamw", "optimizer.lr=2e-4",
                                          "module.ema_sigma_rel=null", "module.ema_decay=0.9999",
                                          "module.prediction=eps", "trainer.max_steps=3000",
                                          "objective=ddpm"])
    net = build_net(cfg.model, (2,))
    choices = {"dataset": "moons", "model": "mlp", "schedule": "linear", "module": "diffusion",
               "optimizer": "adamw", "lr_scheduler": "cosine", "trainer": "default",
               "callbacks": "default", "logger": "none", "experiment": None,
               "text_encoder": None, "loss": "simple", "objective": "ddpm"}
    facts = StartFacts(run_dir=tmp_path, data_shape=(2,), num_samples=10_000, per_device=128,
                       world=2, accumulate=3, precision="32-true", device="cpu",
                       timesteps=1000)
    lines = plain(start_lines(choices, OmegaConf.to_container(cfg, resolve=True), net,
                              task_named("diffusion"), facts))
    counts = [int(m.group(1).replace(",", "")) for line in lines
              if (m := re.fullmatch(r"│   [├└]── \S+(?: \(\w+\))?\s+([\d,]+)", line))]
    assert counts[-1] == sum(counts[:-1]) == count_parameters(net) and len(counts) == 6
    assert lines[0] == f"diffcli train: a diffusion model, run dir {tmp_path}"
    expected = [
        "├── dataset: moons  (2,) x 10,000, batch 128 per device x 2 device(s) x 3 "
        "accumulation = 768",
        "├── model: mlp  MLP, hidden 256, depth 3",
        "├── schedule: linear  T=1000, beta_start 0.0001, beta_end 0.02",
        "├── objective: ddpm  DDPM's discrete chain (schedule above, prediction and loss below)",
        "├── module: diffusion  eps prediction, loss simple, EMA 0.9999 with warm-up",
        "├── optimizer: adamw  AdamW, lr 0.0002, betas (0.9, 0.999), weight_decay 0.01",
        "├── lr_scheduler: cosine  warm-up 100 steps, cosine decay to 0 x lr at step 3000",
        "├── trainer: default  3000 steps, precision 32-true, cpu x 2, gradient_clip_val 1",
        "├── callbacks: default  preview every 1000 steps, last every 500 steps",
        "└── logger: none"]
    assert [ln for ln in lines if not ln.startswith("│")][1:] == expected
    assert len(lines) == 1 + len(expected) + 6


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


@pytest.mark.slow
def test_train_says_its_precision_and_prints_the_summary_once(tmp_path: Path):
    """A real 16-mixed run on this machine's CPU: diffcli's note instead of Lightning's warning,
    the precision it decided, the summary once, the same lines in cli.log."""
    proc = run(tmp_path, "train", "dataset=moons", "model=mlp", "trainer.max_steps=2",
               "logger=none", "callbacks.preview=null", "trainer.precision=16-mixed")
    precision, note = train_precision("16-mixed", True, cpu_has_bf16())
    out = proc.stdout + proc.stderr
    trainer_line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("├── trainer:"))
    assert f"precision {precision}," in trainer_line
    assert LIGHTNING_WARNING not in out
    assert out.count(f"note: {note}") == 1
    assert [ln for ln in out.splitlines() if "bf16" in ln] == \
        [f"note: {note}", *([trainer_line] if "bf16" in precision else [])]
    assert proc.stderr.count("diffcli train: a diffusion model, run dir") == 1
    summary = [ln for ln in proc.stderr.splitlines() if ln.startswith(("├", "│", "└"))]
    assert "│   └── total          191,106" in summary and len(summary) == 15
    assert any(ln.startswith("├── objective: flow  Flow, interpolant linear") for ln in summary)
    assert not any(ln.startswith("├── schedule:") for ln in summary)  # flow has none
    log = next(tmp_path.glob("outputs/*/*/cli.log")).read_text()
    assert all(line in log for line in summary) and f"note: {note}" in log
