"""`diffcli sample ckpt=<autoencoder>`: reconstructions of the run's own images.

An autoencoder (``diffcli train task=autoencoder``) generates nothing by itself; what one wants
to see is how well it reconstructs: the first ``n`` images of its dataset (in order, no flips)
encoded to the posterior mean and decoded, written as a grid (inputs above reconstructions),
PNGs and an .npz, with PSNR and SSIM in meta.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from torch import Tensor

from diffcli.checkpoint import LoadedRun
from diffcli.components import build_datamodule
from diffcli.diffusion.generate import to_uint8
from diffcli.errors import DiffcliError
from diffcli.files import OutputFolder, dumps_json
from diffcli.lit.autoencoder_module import psnr_ssim, recon_grid
from diffcli.lit.autoencoder_module import reconstruct as reconstruct_images
from diffcli.restore import restore_autoencoder
from diffcli.runs import run_dir_of

console = Console(stderr=True, soft_wrap=True)  # a log line stays one line
GUIDANCE_KEYS = ("guidance", "classes", "classifier", "classifier_scale", "prompt", "guide")


def reconstruct(cfg: DictConfig, run: LoadedRun, device: torch.device) -> Path:
    """Reconstruct the first ``n`` (default 64) images of the autoencoder ``run``'s dataset."""
    ckpt = run.path
    given = [k for k in GUIDANCE_KEYS if cfg.get(k) is not None]
    if given:
        raise DiffcliError(f"{ckpt} is an autoencoder: it reconstructs images and takes no "
                           f"{', '.join(given)}; sample from a latent diffusion run instead")
    net = restore_autoencoder(run, device, use_ema=bool(cfg.use_ema))
    x, _ = build_datamodule(run.config["dataset"]).head(int(cfg.n or 64))
    recon = reconstruct_images(net, x, int(cfg.batch_size)).float()
    metrics = psnr_ssim(x, recon)
    folder = OutputFolder(run_dir_of(ckpt) / "samples" / "reconstructions",
                          overwrite=bool(cfg.overwrite), kind="reconstructions")
    with folder as tmp:
        _write(tmp, x, recon)
        meta = {"checkpoint": str(ckpt), "global_step": run.global_step, "n": len(x),
                "dataset": run.config["dataset"].get("name"), **metrics}
        (tmp / "meta.json").write_text(dumps_json(meta))
    console.print(f"[green]wrote[/] {len(x)} reconstructions (PSNR {metrics['psnr']:.2f} dB, "
                  f"SSIM {metrics['ssim']:.4f}) to {folder.path}/ : grid.png (inputs above "
                  "reconstructions), images/, samples.npz, meta.json")
    return folder.path


def _write(out: Path, x: Tensor, recon: Tensor) -> None:
    from torchvision.io import write_png
    from torchvision.utils import save_image

    imgs = to_uint8(recon)
    np.savez_compressed(out / "samples.npz", images=imgs.permute(0, 2, 3, 1).numpy(),
                        originals=to_uint8(x).permute(0, 2, 3, 1).numpy())
    (out / "images").mkdir()
    for i, img in enumerate(imgs):
        write_png(img, str(out / "images" / f"{i:06d}.png"))
    grid = recon_grid(x, recon)
    scale = max(1, 512 // max(grid.shape[-1], 1))
    save_image(torch.nn.functional.interpolate(grid[None], scale_factor=scale)[0],
               out / "grid.png")
