"""The training recipe: EMA, atomic checkpoints, exact state restore on resume, loggers."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from diffcli.checkpoint import atomic_torch_save
from diffcli.data.datamodule import TensorDataModule
from diffcli.diffusion.schedules import linear_schedule
from diffcli.errors import DiffcliError
from diffcli.lit.ema import constant_ema_decay as ema_decay_at
from diffcli.lit.loggers import make_wandb_logger, resolve_wandb_mode
from diffcli.lit.module import DiffusionModule
from diffcli.lit.saving import AtomicCheckpointIO
from diffcli.lit.schedulers import linear_warmup
from diffcli.nets.unet import UNet


def tiny_module(ema_decay: float | None = 0.9, **kw: Any) -> DiffusionModule:
    net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), groups=4)
    return DiffusionModule(net, linear_schedule(100), ema_decay=ema_decay,
                           optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
                           lr_scheduler=functools.partial(linear_warmup, warmup_steps=4), **kw)


def tiny_data(n: int = 32) -> TensorDataModule:
    g = torch.Generator().manual_seed(0)
    return TensorDataModule(torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, batch_size=8)


def tiny_trainer(root: Path, max_steps: int, **kw: Any) -> L.Trainer:
    kw.setdefault("callbacks", [])
    return L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=root, plugins=[AtomicCheckpointIO()], **kw)


def test_ema_decay_warmup() -> None:
    assert ema_decay_at(0, 0.9999) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.9999) == pytest.approx(91 / 100)
    assert ema_decay_at(10**7, 0.9999) == 0.9999
    assert ema_decay_at(0, 0.9999, warmup=False) == 0.9999


@pytest.mark.parametrize("accumulate", [1, 2])
def test_ema_is_the_running_average_of_the_weights(tmp_path: Path, accumulate: int) -> None:
    """e <- d_n e + (1 - d_n) p once per optimizer step (not per accumulated micro-batch),
    checked against a replay of the weights seen after every batch."""
    module = tiny_module(ema_decay=0.8)
    seen: list[tuple[int, dict[str, torch.Tensor]]] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:  # noqa: ANN001
            weights = {k: v.clone() for k, v in pl_module.net.state_dict().items()}
            seen.append((trainer.global_step, weights))

    init = {k: v.clone() for k, v in module.net.state_dict().items()}
    trainer = tiny_trainer(tmp_path, 5, callbacks=[Record()], accumulate_grad_batches=accumulate)
    trainer.fit(module, datamodule=tiny_data())
    assert len(seen) == 5 * accumulate
    expected, last_step = dict(init), 0
    for step, weights in seen:
        if step == last_step:
            continue  # a micro-batch without an optimizer step
        last_step = step
        d = ema_decay_at(step - 1, 0.8)
        expected = {k: d * expected[k] + (1 - d) * weights[k] for k in expected}
    for k, v in module.ema_net.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6)


def test_atomic_save_keeps_the_old_file_when_a_write_dies(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)

    def dying_save(obj: Any, f: Any) -> None:
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # stands in for the process being killed mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_resume_restores_weights_ema_optimizer_lr_and_step(tmp_path: Path) -> None:
    first = tiny_module()
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ck", filename="last", every_n_train_steps=6,
                              save_top_k=1, enable_version_counter=False)
    tiny_trainer(tmp_path, 6, callbacks=[ckpt_cb]).fit(first, datamodule=tiny_data())
    path = tmp_path / "ck" / "last.ckpt"
    saved = torch.load(path, weights_only=True)
    assert saved["global_step"] == 6
    captured: dict[str, Any] = {}

    class Capture(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            captured["step"] = trainer.global_step
            captured["state"] = {k: v.clone() for k, v in pl_module.state_dict().items()}
            captured["opt"] = copy.deepcopy(trainer.optimizers[0].state_dict())
            captured["sched"] = trainer.lr_scheduler_configs[0].scheduler.state_dict()
            captured["lr"] = trainer.optimizers[0].param_groups[0]["lr"]

    second = tiny_module()  # fresh random weights, different from the checkpoint's
    tiny_trainer(tmp_path, 8, callbacks=[Capture()]).fit(second, datamodule=tiny_data(),
                                                         ckpt_path=str(path))
    assert captured["step"] == 6
    for k, v in saved["state_dict"].items():
        torch.testing.assert_close(captured["state"][k], v, rtol=0, atol=0)
    assert any(k.startswith("ema_net.") for k in saved["state_dict"])
    opt_saved = saved["optimizer_states"][0]["state"]
    for i, st in captured["opt"]["state"].items():
        torch.testing.assert_close(st["exp_avg"], opt_saved[i]["exp_avg"], rtol=0, atol=0)
        torch.testing.assert_close(st["exp_avg_sq"], opt_saved[i]["exp_avg_sq"], rtol=0, atol=0)
    assert captured["sched"]["last_epoch"] == 6
    assert captured["lr"] == pytest.approx(1e-3)  # past the 4 warm-up steps


def test_checkpoint_describes_its_data(tmp_path: Path) -> None:
    module = tiny_module(data_info={"kind": "image", "shape": [1, 8, 8]}, run_config={"a": 1})
    trainer = tiny_trainer(tmp_path, 1)
    trainer.fit(module, datamodule=tiny_data())
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    meta = torch.load(tmp_path / "x.ckpt", weights_only=True)["diffcli"]
    assert meta["data"] == {"kind": "image", "shape": [1, 8, 8]} and meta["config"] == {"a": 1}


def test_grad_norm_is_logged_and_matches_the_gradients(tmp_path: Path) -> None:
    module = tiny_module()
    norms: list[float] = []

    class Check(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
            grads = [p.grad.flatten() for p in pl_module.net.parameters() if p.grad is not None]
            norms.append(float(torch.cat(grads).norm()))

    trainer = tiny_trainer(tmp_path, 2, callbacks=[Check()], log_every_n_steps=1)
    trainer.fit(module, datamodule=tiny_data())
    assert float(trainer.callback_metrics["train/grad_norm"]) == pytest.approx(norms[-1], rel=1e-5)


def test_channels_last_training_matches_contiguous(tmp_path: Path) -> None:
    a, b = tiny_module(), tiny_module(channels_last=True)
    b.load_state_dict(a.state_dict())
    b.net.to(memory_format=torch.channels_last)
    for m in (a, b):
        L.seed_everything(3, verbose=False)
        tiny_trainer(tmp_path, 2).fit(m, datamodule=tiny_data())
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5, msg=k)


def test_wandb_mode_resolution(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    assert resolve_wandb_mode(None, cwd=tmp_path) == "offline"  # nothing configured
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "settings").write_text("[default]\nmode = online\n")
    assert resolve_wandb_mode(None, cwd=tmp_path) == "online"  # `wandb online` was run here
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode(None, cwd=tmp_path) == "offline"
    assert resolve_wandb_mode("disabled", cwd=tmp_path) == "disabled"
    with pytest.raises(DiffcliError, match="unknown wandb mode"):
        resolve_wandb_mode("sometimes")


def test_wandb_online_without_key_refuses_instead_of_prompting(tmp_path: Path,
                                                               monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    with pytest.raises(DiffcliError, match="wandb login"):
        make_wandb_logger(str(tmp_path), mode="online")


def test_compile_wraps_only_the_training_forward() -> None:
    module = tiny_module(compile=True)
    assert module.train_forward is not module.net  # the compiled wrapper is used for the loss
    assert not any("_orig_mod" in k for k in module.state_dict())  # plain parameter names
    assert {k.split(".")[0] for k in module.state_dict()} == {"net", "ema_net"}


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal():
    """A SLURM log or ``> file`` gets a line every ``every_s`` seconds and at the last step (a
    live bar would show nothing until the end); a terminal gets the bar and no such lines."""
    import io

    from rich.console import Console

    from diffcli.lit.callbacks import StepProgress, plain_progress_line
    from diffcli.nets.mlp import MLP

    def fit(console: Console) -> str:
        torch.manual_seed(0)
        module = DiffusionModule(MLP(data_shape=(2,), hidden=16, depth=1), linear_schedule(),
                                 ema_decay=None)
        dm = TensorDataModule(torch.randn(64, 2), batch_size=16, kind="points")
        L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, accelerator="cpu",
                  enable_progress_bar=False, enable_model_summary=False,
                  callbacks=[StepProgress(console, every_s=0.0)]).fit(module, datamodule=dm)
        return console.file.getvalue()

    lines = fit(Console(file=io.StringIO(), force_terminal=False)).splitlines()
    assert [ln.split(" | ")[0] for ln in lines] == ["step 1/3", "step 2/3", "step 3/3"]
    assert "steps/s" in lines[-1] and "loss " in lines[-1] and "ETA 0:00:00" in lines[-1]
    bar = fit(Console(file=io.StringIO(), force_terminal=True, width=120))
    assert "step 1/3 |" not in bar and "training" in bar
    line = plain_progress_line(120, 1000, 2.0, {"train/loss": torch.tensor(0.03125),
                                                "train/lr": 2e-3, "train/images_per_s": 134.2})
    assert line == "step 120/1000 | 2.00 steps/s | 134 img/s | loss 0.0312 | lr 2.0e-03 | ETA " \
        "0:07:20"
