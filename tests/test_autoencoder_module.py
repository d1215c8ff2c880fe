"""The autoencoder stage's LightningModule (Rombach et al. 2022, App. G): losses, adversarial
training, EMA, LPIPS handling, PSNR / SSIM, reconstruction grids and checkpoint metadata."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger
from PIL import Image
from torch.utils.data import DataLoader

from diffcli.checkpoint import CHECKPOINT_KEY
from diffcli.lit.autoencoder_module import (
    NO_LPIPS_NOTE,
    AutoencoderModule,
    ReconstructionGrid,
    psnr_ssim,
    recon_grid,
)
from diffcli.lit.schedulers import linear_warmup
from diffcli.nets.autoencoder import KLAutoencoder, VQAutoencoder
from diffcli.nets.perceptual import LPIPS

TINY = {"base_channels": 8, "channel_mults": (1, 2), "groups": 4, "z_channels": 2}


def tiny_net(kind: str = "kl", size: int = 8, channels: int = 1) -> torch.nn.Module:
    if kind == "vq":
        return VQAutoencoder(data_shape=(channels, size, size), n_embed=16, **TINY)
    return KLAutoencoder(data_shape=(channels, size, size), **TINY)


def tiny_module(kind: str = "kl", size: int = 8, **kw: Any) -> AutoencoderModule:
    kw.setdefault("perceptual_weight", 0.0)
    return AutoencoderModule(tiny_net(kind, size),
                             optimizer=functools.partial(torch.optim.Adam, lr=1e-3), **kw)


def images(n: int = 8, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g) * 2 - 1


def fit(module: AutoencoderModule, max_steps: int = 3, size: int = 8, **kw: Any) -> L.Trainer:
    kw.setdefault("logger", False)
    trainer = L.Trainer(max_steps=max_steps, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", **kw)
    trainer.fit(module, DataLoader(images(16, size), batch_size=4))
    return trainer


def params(m: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def changed(before: list[torch.Tensor], m: torch.nn.Module) -> bool:
    """Whether m's parameters moved (a hinge loss's gradient can leave a bias at zero)."""
    return any(not torch.equal(b, p) for b, p in zip(before, m.parameters(), strict=True))


# ---------------------------------------------------------------------------- losses


def test_reconstruction_and_regularization_terms() -> None:
    """L_rec = l1 mean|x - x_hat| + l2 mean (x - x_hat)^2; KL weighted by kl_weight."""
    module = tiny_module(l1_weight=1.0, l2_weight=0.5, kl_weight=0.1)
    x = torch.zeros(2, 1, 8, 8)
    rec, logs = module.reconstruction_loss(x, x + 0.2)
    assert float(rec) == pytest.approx(0.2 + 0.5 * 0.04)
    assert float(logs["l1"]) == pytest.approx(0.2) and float(logs["l2"]) == pytest.approx(0.04)
    out = module.net(x)
    reg, reg_logs = module.regularization(out)
    assert float(reg.detach()) == pytest.approx(0.1 * float(out.reg_loss.detach()))
    assert set(reg_logs) == {"kl"}


def test_vq_loss_has_weight_one() -> None:
    module = tiny_module("vq", kl_weight=0.1)
    out = module.net(images(2))
    reg, logs = module.regularization(out)
    assert torch.equal(reg, out.reg_loss)
    assert set(logs) == {"vq", "perplexity", "usage"}


@pytest.mark.parametrize("bad", [{"l1_weight": -1.0}, {"kl_weight": float("nan")},
                                 {"disc_start": -1}, {"ema_decay": 1.0}, {"eval_images": -1}])
def test_bad_settings_fail_at_construction(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        tiny_module(**bad)


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_trains_with_ema(kind: str) -> None:
    module = tiny_module(kind, ema_decay=0.9)
    before = params(module.net)
    trainer = fit(module)
    metrics = trainer.callback_metrics
    assert trainer.global_step == 3 and changed(before, module.net)
    expected = {"train/loss", "train/rec_loss", "train/l1", "train/psnr", "train/lr"}
    expected |= {"train/kl"} if kind == "kl" else {"train/vq", "train/perplexity", "train/usage"}
    assert expected <= set(metrics)
    assert all(math.isfinite(float(metrics[k])) for k in expected)
    assert not any(k.startswith(("train/g_loss", "train/d_loss")) for k in metrics)
    assert module.sampling_net is module.ema_net
    assert any(not torch.equal(e, p) for e, p in zip(module.ema_net.parameters(),
                                                     module.net.parameters(), strict=True))


def test_no_discriminator_without_disc_start() -> None:
    module = tiny_module(disc_start=None)
    assert module.discriminator is None and module.automatic_optimization
    assert not any("discriminator" in k for k in module.state_dict())
    assert module.sampling_net is module.net  # no EMA by default


def test_a_discriminator_too_deep_for_the_images_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="too deep for 8x8 images"):
        tiny_module(disc_start=1, disc_layers=2)
    assert tiny_module(disc_start=1, disc_layers=1).discriminator.training


def test_discriminator_trains_with_manual_optimization() -> None:
    """From disc_start on both optimizers step; global_step counts autoencoder steps only; the
    LR schedule is stepped once per autoencoder step."""
    module = tiny_module(size=16, disc_start=1, disc_layers=2, disc_channels=8,
                         lr_scheduler=functools.partial(linear_warmup, warmup_steps=10))
    assert not module.automatic_optimization
    net_before, disc_before = params(module.net), params(module.discriminator)
    batches: list[int] = []

    class Count(L.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            batches.append(1)

    trainer = fit(module, size=16, callbacks=[Count()])
    assert trainer.global_step == 3 and len(batches) == 3
    assert changed(net_before, module.net) and changed(disc_before, module.discriminator)
    metrics = trainer.callback_metrics
    for key in ("train/g_loss", "train/d_loss", "train/disc_weight", "train/loss"):
        assert math.isfinite(float(metrics[key])), key
    opt_ae, opt_d = trainer.optimizers
    assert opt_ae.param_groups[0]["lr"] == pytest.approx(1e-3 * 4 / 10)
    assert opt_d.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert opt_d.param_groups[0]["betas"] == (0.5, 0.9)


def test_discriminator_waits_for_disc_start() -> None:
    module = tiny_module(size=16, disc_start=5, disc_channels=8)
    disc_before = params(module.discriminator)
    trainer = fit(module, max_steps=2, size=16)
    assert trainer.global_step == 2
    assert all(torch.equal(b, p) for b, p in zip(disc_before, module.discriminator.parameters(),
                                                 strict=True))
    assert "train/d_loss" not in trainer.callback_metrics


# ---------------------------------------------------------------------------- metrics


def test_psnr_ssim_of_identical_images() -> None:
    x = images(4)
    m = psnr_ssim(x, x.clone())
    assert (math.isinf(m["psnr"]) or m["psnr"] > 100) and m["ssim"] == pytest.approx(1.0)


def test_psnr_of_a_constant_error() -> None:
    """An error of 0.1 on the [0, 1] scale (0.2 on [-1, 1]): 10 log10(1 / 0.01) = 20 dB."""
    x = torch.full((2, 3, 8, 8), -0.5)
    assert psnr_ssim(x, x + 0.2)["psnr"] == pytest.approx(20.0, abs=1e-4)


def test_psnr_ssim_of_tiny_images() -> None:
    m = psnr_ssim(images(2, size=4), images(2, size=4, seed=1))
    assert math.isfinite(m["psnr"]) and -1 <= m["ssim"] <= 1


def test_reconstruct_uses_the_posterior_mode_in_eval_mode() -> None:
    module = tiny_module()
    x = images(3)
    recon = module.reconstruct(x)
    assert module.net.training and recon.shape == x.shape
    module.net.eval()
    assert torch.allclose(recon, module.net(x, sample=False).recon)
    module.eval_batch = x
    assert module.reconstruction_metrics() == psnr_ssim(x, recon)


def test_recon_grid_layout() -> None:
    x, recon = images(3), -images(3)
    grid = recon_grid(x, recon)  # one row of inputs above one of reconstructions
    assert grid.shape == (3, 2 * 9 + 1, 3 * 9 + 1)
    assert torch.allclose(grid[0, 1:9, 1:9], (x[0, 0] + 1) / 2)
    assert torch.allclose(grid[0, 10:18, 1:9], (recon[0, 0] + 1) / 2)
    grid = recon_grid(x, recon, nrow=2)  # inputs 0-1, recons 0-1, input 2, recon 2
    assert grid.shape == (3, 4 * 9 + 1, 2 * 9 + 1)
    assert torch.allclose(grid[0, 19:27, 1:9], (x[2, 0] + 1) / 2)
    assert torch.allclose(grid[0, 28:36, 1:9], (recon[2, 0] + 1) / 2)
    assert torch.all(grid[:, 28:36, 10:18] == 1)  # the short last row is padded white


# ---------------------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module")
def lpips_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-init LPIPS files: torchvision-layout VGG16 features and (1, c, 1, 1) heads."""
    folder = tmp_path_factory.mktemp("lpips")
    state = LPIPS().state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith("features.")},
               folder / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1)
                for i, c in enumerate((64, 128, 256, 512, 512))}, folder / "lpips_vgg.pth")
    return folder


def test_no_lpips_weights_leaves_a_note() -> None:
    assert tiny_module(perceptual_weight=1.0).perceptual_note == NO_LPIPS_NOTE
    assert tiny_module(perceptual_weight=0.0).perceptual_note is None


def test_lpips_folder_is_used_but_not_saved(lpips_folder: Path) -> None:
    module = tiny_module(size=16, perceptual_weight=0.5, perceptual_weights=str(lpips_folder))
    assert module.perceptual_note is None
    assert not any(k.startswith(("lpips", "features", "lin")) or ".lin" in k
                   for k in module.state_dict())
    x = images(2, size=16)
    rec, logs = module.reconstruction_loss(x, x.flip(0))
    assert float(logs["perceptual"]) > 0
    assert float(rec) == pytest.approx(float(logs["l1"]) + 0.5 * float(logs["perceptual"]))
    assert float(module.reconstruction_loss(x, x)[1]["perceptual"]) == pytest.approx(0, abs=1e-6)


def test_bad_lpips_folder_fails(tmp_path: Path, lpips_folder: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        tiny_module(size=16, perceptual_weight=1.0, perceptual_weights=str(tmp_path / "no"))
    (tmp_path / "lpips_vgg.pth").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="vgg16.pth"):
        tiny_module(size=16, perceptual_weight=1.0, perceptual_weights=str(tmp_path))
    with pytest.raises(ValueError, match="at least 16x16"):  # VGG16 cannot see 8x8 images
        tiny_module(size=8, perceptual_weight=1.0, perceptual_weights=str(lpips_folder))


# ---------------------------------------------------------------------------- callback, ckpt


class Capture(Logger):
    """A logger that keeps what it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))


def test_reconstruction_grid(tmp_path: Path) -> None:
    module = tiny_module()
    module.eval_batch = images(6, seed=3)
    callback = ReconstructionGrid(tmp_path, every_n_steps=2, num_images=4)
    logger = Capture()
    fit(module, max_steps=4, callbacks=[callback], logger=logger)
    names = sorted(p.name for p in (tmp_path / "progress").iterdir())
    assert names == ["recon-step-0000002.png", "recon-step-0000004.png"]
    grid_h, grid_w = 2 * 9 + 1, 4 * 9 + 1  # inputs above reconstructions, 4 a row
    scale = math.ceil(256 / grid_w)
    assert Image.open(tmp_path / "progress" / names[0]).size == (grid_w * scale, grid_h * scale)
    logged = [(step, m) for step, m in logger.metrics if "val/psnr" in m]
    assert [step for step, _ in logged] == [2, 4]
    assert set(callback.metrics) == {"psnr", "ssim"}
    assert all(math.isfinite(m["val/psnr"]) and -1 <= m["val/ssim"] <= 1 for _, m in logged)


def test_checkpoint_metadata_and_resume(tmp_path: Path) -> None:
    """on_save_checkpoint writes the metadata; a resumed adversarial run counts autoencoder
    steps (one per batch) from where it stopped."""
    config = {"model": {"name": "autoencoder"}}
    data_info = {"kind": "image", "shape": [1, 16, 16]}

    def make() -> AutoencoderModule:
        return tiny_module(size=16, disc_start=0, disc_channels=8, run_config=config,
                           data_info=data_info)

    trainer = fit(make(), max_steps=1, size=16)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt[CHECKPOINT_KEY] == {"format": 1, "config": config, "data": data_info}
    assert any(k.startswith("discriminator.") for k in ckpt["state_dict"])
    assert len(ckpt["optimizer_states"]) == 2 and ckpt["global_step"] == 1
    resumed = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    resumed.fit(make(), DataLoader(images(16, 16), batch_size=4),
                ckpt_path=tmp_path / "last.ckpt")
    assert resumed.global_step == 2
