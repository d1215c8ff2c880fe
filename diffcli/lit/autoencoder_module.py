"""The autoencoder stage of latent diffusion (Rombach et al. 2022, Sec. 3 and App. G).

The autoencoder ``x (B, C, H, W) in [-1, 1] -> x_hat = D(E(x)) (B, C, H, W)`` is trained on
(Esser et al. 2021, eq. 4-7; Rombach et al. 2022, App. G)::

    L = L_rec + w_reg * L_reg + lambda * L_G
    L_rec = l1_weight * mean|x - x_hat| + l2_weight * mean (x - x_hat)^2
            + perceptual_weight * mean LPIPS(x, x_hat)            (Zhang et al. 2018)
    L_reg = KL(q(z | x) || N(0, I))  (w_reg = kl_weight, about 1e-6)      for a KL net
          = codebook + commitment loss (w_reg = 1; van den Oord et al. 2017, eq. 3) for VQ
    L_G   = -mean D(x_hat)                                              (after disc_start)
    lambda = disc_weight * ||grad_GL L_rec|| / (||grad_GL L_G|| + 1e-4)        (eq. 7)

with ``GL`` the decoder's last layer and ``D`` a patch discriminator (Isola et al. 2017)
trained by its own optimizer on the hinge loss of ``(x, sg[x_hat])``. Without a
discriminator (``disc_start`` None) Lightning's automatic optimization runs; with one the
module steps both optimizers itself, and ``trainer.global_step`` counts autoencoder steps only
(so ``max_steps``, checkpoint intervals and ``disc_start`` all mean autoencoder steps).

:class:`ReconstructionGrid` writes input / reconstruction grids and PSNR / SSIM during training;
:func:`recon_grid` and :func:`psnr_ssim` are shared with the sample and eval workflows.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from diffcli.lit.callbacks import ProgressPictures
from diffcli.lit.ema import check_ema
from diffcli.lit.module import (
    CHECKPOINT_KEY,
    EMAMixin,
    batch_data,
    check_optimizer,
    checkpoint_meta,
    optimizers_for,
)
from diffcli.nets.autoencoder import PatchDiscriminator, adaptive_gan_weight, hinge_d_loss

DISC_BETAS = (0.5, 0.9)  # the discriminator's Adam betas (Esser et al. 2021)
DISC_LR = 1e-4  # its learning rate when the main optimizer names none
LPIPS_MIN_SIZE = 16  # VGG16 pools 4 times before relu5_3
RECON_CHUNK = 16  # images per forward pass in reconstruct()
NO_LPIPS_NOTE = ("perceptual loss skipped: no LPIPS weights given "
                 "(perceptual_weights=<folder with vgg16.pth and lpips_vgg.pth>)")


def to_unit(x: Tensor) -> Tensor:
    """Images in [-1, 1] -> [0, 1] (clipped), float32. Same shape."""
    return ((x.detach().float().clamp(-1, 1) + 1) / 2)


def batch_psnr(x: Tensor, recon: Tensor) -> Tensor:
    """PSNR in dB of the whole batch, ``10 log10(1 / mse)`` on [0, 1] images; x, recon
    (B, C, H, W) in [-1, 1] -> scalar (cheap: no per-image reduction)."""
    mse = (to_unit(recon) - to_unit(x)).square().mean()
    return 10 * torch.log10(1 / mse)


def psnr_ssim(x: Tensor, recon: Tensor) -> dict[str, float]:
    """``{"psnr": dB, "ssim": value}`` of reconstructions ``recon`` of ``x``, both (N, C, H, W)
    in [-1, 1], compared in [0, 1] with ``data_range=1``.

    PSNR is ``10 log10(1 / mse)`` per image, averaged (inf for identical images); SSIM is
    Wang et al. 2004's mean SSIM with an 11x11 Gaussian window of sigma 1.5 (narrower for
    images under 7 pixels, which an 11-wide window cannot cover).
    """
    if x.shape != recon.shape or x.ndim != 4:
        raise ValueError(f"psnr_ssim compares images (N, C, H, W) of one shape, got "
                         f"{tuple(x.shape)} and {tuple(recon.shape)}")
    a, b = to_unit(recon), to_unit(x.to(recon.device))
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0, dim=(1, 2, 3))
    sigma = min(1.5, max(0.1, (min(x.shape[-2:]) - 1) / 3.5))  # window 2 int(3.5 s + .5) + 1
    ssim = structural_similarity_index_measure(a, b, data_range=1.0, sigma=sigma)
    return {"psnr": float(psnr), "ssim": float(ssim)}


def recon_grid(x: Tensor, recon: Tensor, nrow: int | None = None) -> Tensor:
    """Inputs above their reconstructions: x, recon (N, C, H, W) in [-1, 1] -> (3 or C, H', W')
    in [0, 1].

    ``nrow`` images a row (default N: one row of inputs, one of reconstructions); for more than
    ``nrow`` images, rows of inputs and of their reconstructions alternate (a short last pair
    of rows is padded with white).
    """
    from torchvision.utils import make_grid

    if x.shape != recon.shape or x.ndim != 4 or len(x) == 0:
        raise ValueError(f"recon_grid takes inputs and reconstructions (N, C, H, W) of one "
                         f"shape, got {tuple(x.shape)} and {tuple(recon.shape)}")
    nrow = len(x) if nrow is None else max(1, int(nrow))
    rows = []
    for start in range(0, len(x), nrow):
        for images in (x[start:start + nrow], recon[start:start + nrow]):
            pad = torch.ones(nrow - len(images), *images.shape[1:], device=images.device)
            rows.append(torch.cat([to_unit(images), pad]))
    return make_grid(torch.cat(rows).cpu(), nrow=nrow, padding=1, pad_value=1)


def _chunks(x: Tensor, size: int = RECON_CHUNK) -> Iterator[Tensor]:
    return (x[i:i + size] for i in range(0, len(x), size))


@torch.no_grad()
def reconstruct(net: nn.Module, x: Tensor, chunk: int = RECON_CHUNK) -> Tensor:
    """D(mean of q(z | x)) of images x (N, C, H, W) in [-1, 1] by an autoencoder ``net`` (used
    as it is: the caller sets eval mode), ``chunk`` images at a time on the net's device;
    (N, C, H, W) on x's device."""
    device = next(net.parameters()).device
    return torch.cat([net(xb.to(device), sample=False).recon.to(x.device)
                      for xb in _chunks(x, chunk)])


def _check_weights(**weights: float) -> None:
    """Raise ValueError unless every loss weight is a finite number >= 0."""
    for name, w in weights.items():
        if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
            raise ValueError(f"{name}={w!r} must be a finite number >= 0")


def _check_disc(disc_start: int | None, disc_layers: int, disc_channels: int) -> None:
    if disc_start is not None and not (isinstance(disc_start, int) and disc_start >= 0):
        raise ValueError(f"disc_start={disc_start!r} must be an integer >= 0 (the autoencoder "
                         "step where the adversarial loss starts), or null for none")
    if disc_layers < 1 or disc_channels < 1:
        raise ValueError(f"disc_layers={disc_layers} and disc_channels={disc_channels} must "
                         "both be >= 1")


def _step_uncounted(optimizer: Any) -> None:
    """Step a LightningOptimizer without advancing ``trainer.global_step``.

    In manual optimization Lightning counts every ``optimizer.step()``, so a generator and a
    discriminator step would make two "steps" of one batch; the discriminator's is left out.
    """
    before, after = optimizer._on_before_step, optimizer._on_after_step
    optimizer._on_before_step = optimizer._on_after_step = lambda: None
    try:
        optimizer.step()
    finally:
        optimizer._on_before_step, optimizer._on_after_step = before, after


class AutoencoderModule(EMAMixin, L.LightningModule):
    """Trains a :class:`~diffcli.nets.autoencoder.KLAutoencoder` or ``VQAutoencoder`` on the
    loss of the module docs and keeps an EMA copy of it.

    Args:
        net: the autoencoder ``x (B, C, H, W) -> AutoencoderOutput(recon, reg_loss, stats)``.
        optimizer, lr_scheduler: as :class:`~diffcli.lit.module.DiffusionModule`'s (default
            Adam, lr 1e-4).
        l1_weight, l2_weight: weights of mean |x - x_hat| and mean (x - x_hat)^2.
        kl_weight: weight of the KL term (KL nets; a VQ net's loss has weight 1).
        perceptual_weight: weight of the mean LPIPS distance (needs ``perceptual_weights``).
        perceptual_weights: folder with ``vgg16.pth`` and ``lpips_vgg.pth``
            (:func:`diffcli.nets.perceptual.load_lpips`); None: no perceptual term, and
            ``perceptual_note`` says so when ``perceptual_weight > 0``.
        disc_start: autoencoder steps before the adversarial loss starts; None: no
            discriminator at all.
        disc_weight: the factor of the adaptive GAN weight (Esser et al. 2021, eq. 7).
        disc_layers, disc_channels: the :class:`~diffcli.nets.autoencoder.PatchDiscriminator`.
        ema_decay, ema_warmup: the EMA copy ``ema_net`` (None: none), as DiffusionModule's.
        eval_images: how many held-out images ``eval_batch`` holds (set by the workflow).
        channels_last: feed image batches in channels-last memory format.
        run_config, data_info: written into every checkpoint.
        **_: the diffusion module's other keywords do not apply.
    """

    def __init__(self, net: nn.Module, *,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 lr_scheduler: Callable[..., Any] | None = None,
                 l1_weight: float = 1.0, l2_weight: float = 0.0, kl_weight: float = 1e-6,
                 perceptual_weight: float = 1.0, perceptual_weights: str | None = None,
                 disc_start: int | None = None, disc_weight: float = 0.5,
                 disc_layers: int = 2, disc_channels: int = 64,
                 ema_decay: float | None = None, ema_warmup: bool = True, eval_images: int = 64,
                 channels_last: bool = False, run_config: dict[str, Any] | None = None,
                 data_info: dict[str, Any] | None = None, **_: Any) -> None:
        super().__init__()
        _check_weights(l1_weight=l1_weight, l2_weight=l2_weight, kl_weight=kl_weight,
                       perceptual_weight=perceptual_weight, disc_weight=disc_weight)
        _check_disc(disc_start, disc_layers, disc_channels)
        check_ema(ema_decay)
        if not (isinstance(eval_images, int) and eval_images >= 0):
            raise ValueError(f"eval_images={eval_images!r} must be an integer >= 0")
        self.make_optimizer = optimizer or functools.partial(torch.optim.Adam, lr=1e-4)
        self.make_lr_scheduler = lr_scheduler
        check_optimizer(self.make_optimizer, lr_scheduler)
        self.net = net
        self.ema_net = copy.deepcopy(net).requires_grad_(False) if ema_decay else None
        self.ema_decay, self.ema_warmup = ema_decay, ema_warmup
        self.l1_weight, self.l2_weight, self.kl_weight = l1_weight, l2_weight, kl_weight
        self.perceptual_weight, self.disc_weight = perceptual_weight, disc_weight
        self.regularizer: str = getattr(net, "regularizer", "kl")
        self._load_perceptual(perceptual_weights, getattr(net, "data_shape", None))
        self.disc_start = disc_start
        self.discriminator = None if disc_start is None else _discriminator(
            net, data_info, disc_channels, disc_layers)
        self.automatic_optimization = disc_start is None
        self.eval_images = eval_images
        self.eval_batch: Tensor | None = None
        self.channels_last = channels_last
        self.run_config = run_config or {}
        self.data_info = data_info
        self._ema_step = -1

    def _load_perceptual(self, folder: str | None, data_shape: Any) -> None:
        """LPIPS (frozen, kept out of the state dict) when weighted and given; else a note."""
        self.perceptual_note: str | None = None
        lpips = None
        if self.perceptual_weight > 0 and folder is None:
            self.perceptual_note = NO_LPIPS_NOTE
        elif self.perceptual_weight > 0:
            from diffcli.nets.perceptual import load_lpips

            lpips = load_lpips(folder)  # ValueError for a missing / broken folder
            if data_shape is not None and min(data_shape[-2:]) < LPIPS_MIN_SIZE:
                raise ValueError(f"the perceptual loss (LPIPS, VGG16) needs images of at least "
                                 f"{LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} pixels, got "
                                 f"{data_shape[-2]}x{data_shape[-1]}; set perceptual_weight=0")
        self.__dict__["lpips"] = lpips  # not a submodule: not saved, not in the optimizer

    # ------------------------------------------------------------------ loss

    def _images(self, batch: Tensor | tuple | list) -> Tensor:
        x = batch_data(batch)
        if x.ndim != 4:
            raise ValueError(f"the autoencoder trains on images (B, C, H, W), got a batch of "
                             f"shape {tuple(x.shape)}")
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _perceptual(self, x: Tensor, recon: Tensor) -> Tensor:
        """Mean LPIPS distance of x, recon (B, C, H, W) in [-1, 1] (C 1 or 3); the LPIPS net
        follows the batch to its device."""
        lpips = self.__dict__["lpips"]
        if next(lpips.parameters()).device != x.device:
            lpips.to(x.device)
        return lpips(x, recon).mean()

    def reconstruction_loss(self, x: Tensor, recon: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_rec of x, recon (B, C, H, W) (module docs) and its parts to log."""
        err = recon - x
        l1 = err.abs().mean()
        rec = self.l1_weight * l1
        logs = {"l1": l1.detach()}
        if self.l2_weight > 0:
            l2 = err.square().mean()
            rec = rec + self.l2_weight * l2
            logs["l2"] = l2.detach()
        if self.__dict__["lpips"] is not None:
            p = self._perceptual(x, recon)
            rec = rec + self.perceptual_weight * p
            logs["perceptual"] = p.detach()
        logs["rec_loss"] = rec.detach()
        return rec, logs

    def regularization(self, out: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """w_reg * L_reg: kl_weight * KL for a KL net, the VQ loss (weight 1) for a VQ net."""
        if self.regularizer == "vq":
            stats = {k: out.stats[k] for k in ("perplexity", "usage") if k in out.stats}
            return out.reg_loss, {"vq": out.reg_loss.detach(), **stats}
        return self.kl_weight * out.reg_loss, {"kl": out.reg_loss.detach()}

    def generator_loss(self, rec: Tensor, recon: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """lambda * L_G with L_G = -mean D(x_hat) and eq. 7's adaptive lambda (times
        disc_weight) on the decoder's last layer."""
        g_loss = -self.discriminator(recon).mean()
        weight = self.disc_weight * adaptive_gan_weight(rec, g_loss, self.net.last_layer)
        return weight * g_loss, {"g_loss": g_loss.detach(), "disc_weight": weight}

    def _disc_on(self) -> bool:
        return self.discriminator is not None and self.global_step >= self.disc_start

    # ------------------------------------------------------------------ steps

    def training_step(self, batch: Tensor | tuple | list, batch_idx: int) -> Tensor:
        x = self._images(batch)
        out = self.net(x)  # posterior sample (KL) / straight-through codes (VQ)
        rec, logs = self.reconstruction_loss(x, out.recon)
        reg, reg_logs = self.regularization(out)
        loss = rec + reg
        logs.update(reg_logs)
        disc_on = self._disc_on()
        if disc_on:
            g_term, g_logs = self.generator_loss(rec, out.recon)
            loss = loss + g_term
            logs.update(g_logs)
        if not self.automatic_optimization:
            self._manual_steps(loss, x, out.recon, disc_on, logs)
        logs["psnr"] = batch_psnr(x, out.recon)
        self._log(loss, logs)
        return loss if self.automatic_optimization else loss.detach()

    def _manual_steps(self, loss: Tensor, x: Tensor, recon: Tensor, disc_on: bool,
                      logs: dict[str, Tensor]) -> None:
        """Autoencoder step (and LR schedule), then, once on, the discriminator's hinge step
        on (x, sg[x_hat])."""
        opt_ae, opt_d = self.optimizers()
        opt_ae.zero_grad()
        self.manual_backward(loss)
        opt_ae.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        if disc_on:
            d_loss = hinge_d_loss(self.discriminator(x), self.discriminator(recon.detach()))
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            _step_uncounted(opt_d)
            logs["d_loss"] = d_loss.detach()

    def _log(self, loss: Tensor, logs: dict[str, Tensor]) -> None:
        self.log("train/loss", loss.detach(), prog_bar=True)
        for name, value in logs.items():
            self.log(f"train/{name}", value, prog_bar=name == "psnr")
        opt = self.optimizers()
        opt = opt[0] if isinstance(opt, list | tuple) else opt
        self.log("train/lr", opt.param_groups[0]["lr"])

    def configure_optimizers(self) -> Any:
        """The autoencoder's optimizer (and LR schedule); with a discriminator also Adam over
        it (the main optimizer's lr, betas (0.5, 0.9)), stepped by :meth:`training_step`."""
        main = optimizers_for(self.net, self.make_optimizer, self.make_lr_scheduler,
                              self.trainer)
        if self.discriminator is None:
            return main
        opt = main["optimizer"]
        lr = opt.defaults.get("lr", DISC_LR)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=DISC_BETAS)
        if "lr_scheduler" not in main:
            return [opt, opt_d]
        return [opt, opt_d], [main["lr_scheduler"]["scheduler"]]

    # ------------------------------------------------------------------ EMA, evaluation

    def on_train_start(self) -> None:
        self._ema_step = self.global_step

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """``sampling_net``'s reconstructions (posterior mode, eval mode) of x (N, C, H, W) in
        [-1, 1] -> (N, C, H, W) on x's device, in chunks of 16 images."""
        net = self.sampling_net
        was_training = net.training
        net.eval()
        try:
            return reconstruct(net, x)
        finally:
            net.train(was_training)

    def reconstruction_metrics(self, x: Tensor | None = None) -> dict[str, float]:
        """``{"psnr", "ssim"}`` (:func:`psnr_ssim`) of :meth:`reconstruct` on x (N, C, H, W)
        in [-1, 1]; default ``eval_batch``."""
        x = self.eval_batch if x is None else x
        if x is None:
            raise ValueError("no images to reconstruct: pass x or set eval_batch")
        return psnr_ssim(x, self.reconstruct(x))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_meta(self.run_config, self.data_info)


def _image_channels(net: nn.Module, data_info: dict[str, Any] | None) -> int:
    """Image channels C for the discriminator: the net's, else data_info's shape [C, H, W]."""
    channels = getattr(net, "image_channels", None)
    if channels is None and data_info and data_info.get("shape"):
        channels = data_info["shape"][0]
    if channels is None:
        raise ValueError("cannot size the discriminator: the net has no image_channels and "
                         "data_info no shape")
    return int(channels)


class ReconstructionGrid(ProgressPictures):
    """Every ``every_n_steps`` optimizer steps (rank 0), reconstruct the module's ``eval_batch``
    (else the current batch) with its ``sampling_net`` and write the first ``num_images``
    inputs above their reconstructions to ``<run_dir>/progress/recon-step-<N>.png``; also log
    ``val/psnr`` and ``val/ssim`` (:func:`psnr_ssim` on all of them) and send the grid to the
    loggers that take images. ``every_n_steps`` None: off.
    """

    prefix = "recon-step"
    key = "reconstructions"

    def __init__(self, run_dir: str | Path, every_n_steps: int | None = 1000,
                 num_images: int = 8) -> None:
        super().__init__(run_dir, every_n_steps, num_images)
        self.metrics: dict[str, float] = {}

    def draw(self, pl_module: Any, batch: Any) -> tuple[Tensor, dict[str, float]] | None:
        x = getattr(pl_module, "eval_batch", None)
        x = batch_data(batch).detach() if x is None or len(x) == 0 else x
        if x.ndim != 4:
            return None
        recon = pl_module.reconstruct(x)
        self.metrics = psnr_ssim(x, recon)
        n = self.num_images
        return recon_grid(x[:n], recon[:n]), {f"val/{k}": v for k, v in self.metrics.items()}


def _discriminator(net: nn.Module, data_info: dict | None, channels: int,
                   layers: int) -> PatchDiscriminator:
    """The patch discriminator, tried once on the net's image size: one line when its strided
    convolutions would shrink the image below its last 4x4 kernel."""
    disc = PatchDiscriminator(_image_channels(net, data_info), channels, layers)
    shape = getattr(net, "data_shape", None)
    if shape is not None:
        try:
            with torch.no_grad():
                disc.eval()(torch.zeros(1, *shape))
            disc.train()
        except RuntimeError:
            raise ValueError(f"a {layers}-layer patch discriminator is too deep for "
                             f"{shape[-2]}x{shape[-1]} images: lower module.disc_layers "
                             "(or train on larger images)") from None
    return disc
