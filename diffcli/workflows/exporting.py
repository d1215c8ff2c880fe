"""`diffcli export`: a trained run as a file or folder that other tools (and diffcli) load.

* ``format=safetensors``: ``model.safetensors`` (the network's weights, EMA by default) and
  ``model.json`` (the run's resolved config): ``diffcli sample ckpt=<out>/model.safetensors``
  and ``diffcli.load(...)`` use it with no pickle anywhere.
* ``format=diffusers``: a ``DDPMPipeline`` folder (``unet/`` a ``UNet2DModel``, ``scheduler/``
  the run's schedule with the chosen ``sampler`` as DDPM / DDIM / DPM-Solver++ scheduler; a
  flow-matching model's, ``objective=flow`` on diffusers' linear path, as
  ``FlowMatchEulerDiscreteScheduler``; EDM and other flow paths are refused in one line);
  ``diffcli sample ckpt=<folder>`` reads it back. A DiT run writes ``transformer/`` (a
  ``DiTTransformer2DModel``) in place of ``unet/``.
* ``format=onnx``: ``model.onnx``, the denoiser ``(x_t, t[, y]) -> prediction`` with a dynamic
  batch axis, checked against torch with onnxruntime.

Every export writes a model card, ``README.md``, into ``out`` (default
``<run dir>/export/<format>/``), which appears complete or not at all.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console

from diffcli.checkpoint import LoadedRun, read_autoencoder
from diffcli.components import plain
from diffcli.errors import DiffcliError
from diffcli.files import OutputFolder, atomic_write_text
from diffcli.interop.model_card import eval_results, model_card
from diffcli.interop.safetensors_io import write_safetensors
from diffcli.nets.layers import count_parameters
from diffcli.restore import require_diffusion, restore_net
from diffcli.runs import run_dir_of, run_to_use

console = Console(stderr=True, soft_wrap=True)  # a log line stays one line


SCHEDULER_OF = {"diffcli.diffusion.samplers.ddpm.DDPM": "ddpm",
                "diffcli.diffusion.samplers.ddim.DDIM": "ddim",
                "diffcli.diffusion.samplers.dpm_solver.DPMSolverPP2M": "dpmpp_2m"}


def scheduler_of(sampler: Any) -> str:
    """The diffusers scheduler of the ``sampler`` config node (ddpm, ddim or dpmpp_2m); one
    line for samplers diffusers has no scheduler of the same algorithm for."""
    name = SCHEDULER_OF.get(str((sampler or {}).get("_target_")))
    if name is None:
        raise DiffcliError(f"format=diffusers writes the scheduler of sampler=ddpm, ddim or "
                           f"dpmpp_2m; {str((sampler or {}).get('_target_')).rsplit('.', 1)[-1]}"
                           " has no diffusers scheduler of the same algorithm")
    return name


def diffusers_scheduler(run: LoadedRun, sampler: Any) -> tuple[str, dict[str, Any]]:
    """(diffusers scheduler class, its config) for ``run`` exported with the ``sampler`` node:
    the DDPM chain's schedule as the sampler's scheduler, a flow model's objective as
    ``FlowMatchEulerDiscreteScheduler`` (sampler euler or ddim). ValueError / DiffcliError, one
    line, for what diffusers has no scheduler of (EDM, other flow paths, other samplers)."""
    from diffcli.interop.diffusers_flow import (
        FLOW_SCHEDULER,
        flow_sampler,
        flow_scheduler_config,
    )
    from diffcli.interop.diffusers_io import scheduler_config

    if run.continuous is not None:
        config = flow_scheduler_config(run.continuous)
        flow_sampler(sampler)
        return FLOW_SCHEDULER, config
    return scheduler_config(run.config.get("schedule") or {}, run.schedule().betas,
                            run.prediction, run.learned_variance, scheduler_of(sampler))


def check_exportable(run: LoadedRun, fmt: str, sampler: Any = None) -> None:
    """One line, before anything is written, for a model that ``fmt`` cannot hold (and, for
    diffusers, a ``sampler`` node without a diffusers scheduler)."""
    from diffcli.interop.diffusers_io import diffusers_layout, vae_kwargs
    from diffcli.interop.diffusers_vae import autoencoder_kl_config

    require_diffusion(run)
    needs = {"diffusers": ("diffusers",), "onnx": ("onnx", "onnxruntime")}.get(fmt, ())
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        raise DiffcliError(f"format={fmt} needs {', '.join(missing)}: pip install "
                           "'diffcli[export]'")
    if fmt in ("diffusers", "onnx"):
        _check_unpadded(run, fmt)
    if fmt == "onnx" and run.text_encoder is not None:
        raise DiffcliError(f"{run.path} is a text-to-image model: format=onnx exports networks "
                           "of (x_t, t[, y]); export it as format=safetensors")
    if fmt == "onnx" and run.continuous is not None:
        raise DiffcliError(f"format=onnx writes networks of integer timesteps; {run.path} was "
                           f"trained with objective={run.continuous.name} (real-valued noise "
                           "levels): export it as format=safetensors")
    if fmt == "diffusers":
        try:
            diffusers_scheduler(run, sampler)
            diffusers_layout(run.config, run.sample_shape, num_classes=run.num_classes,
                             text=run.text_encoder is not None)
            if run.latent is not None and not run.latent.pretrained:
                ae = read_autoencoder(run.latent.source)
                autoencoder_kl_config(vae_kwargs(ae.config["autoencoder"]),
                                      ae.data_info().shape, run.latent.scale_factor)
        except ValueError as e:
            raise DiffcliError(f"format=diffusers: {e}") from None


def _check_unpadded(run: LoadedRun, fmt: str) -> None:
    """diffusers' UNet2DModel (and our ONNX graph's fixed levels) need sizes that the U-Net's
    levels halve exactly: diffcli pads other sizes, which the other tools do not."""
    model = run.config.get("model") or {}
    if not str(model.get("_target_", "")).endswith(".UNet") or len(run.sample_shape) != 3:
        return
    import inspect

    from diffcli.nets.unet import UNet

    default = inspect.signature(UNet).parameters["channel_mults"].default
    mults = model.get("channel_mults") or default
    m = 2 ** (len(mults) - 1)
    h, w = run.sample_shape[-2:]
    if h % m or w % m:
        raise DiffcliError(f"format={fmt}: the U-Net pads its {h}x{w} inputs to multiples of {m} "
                           f"(its {m.bit_length()} levels), which {fmt} would not; export it as "
                           "format=safetensors")


def _vae(run: LoadedRun) -> Any:
    """A latent model's autoencoder as diffusers' ``AutoencoderKL`` (None for pixel models):
    diffcli's KL autoencoder mapped (EMA weights when present), or the ``latent.pretrained``
    folder it was trained with, as it is."""
    latent = run.latent
    if latent is None:
        return None
    if latent.pretrained:
        from diffusers import AutoencoderKL

        from diffcli.nets.latent import pretrained_folder

        return AutoencoderKL.from_pretrained(str(pretrained_folder(latent.source)[0]),
                                             local_files_only=True, use_safetensors=True)
    from diffcli.interop.diffusers_io import autoencoder_kl

    ae = read_autoencoder(latent.source)
    return autoencoder_kl(ae.config["autoencoder"], ae.network_weights(use_ema=True)[0],
                          ae.data_info().shape, latent.scale_factor)


def exported_weights(run: LoadedRun, which: str) -> tuple[dict[str, torch.Tensor], str]:
    """The network's weights to export: the EMA ones when asked and present, else the trained
    ones; with the word for what was taken ("ema" or "raw")."""
    weights, prefix = run.network_weights(use_ema=which == "ema")
    if which == "ema" and prefix == "net":
        console.print("[yellow]note[/]: the run has no EMA weights; exporting the trained ones")
    return weights, "ema" if prefix == "ema_net" else "raw"


def _safetensors(run: LoadedRun, folder: Path, which: str) -> tuple[str, list[str]]:
    weights, taken = exported_weights(run, which)
    write_safetensors(folder / "model.safetensors", weights, run.config, run.describe_data(),
                      run.global_step, taken, str(run.path))
    return taken, ["import diffcli", "", 'pipe = diffcli.load("{folder}/model.safetensors")',
                   "images = pipe.sample(16, sampler=\"ddim\", steps=50)",
                   "# or: diffcli sample ckpt={folder}/model.safetensors"]


def _onnx(run: LoadedRun, folder: Path, which: str, check: bool) -> tuple[str, list[str]]:
    from diffcli.interop.onnx import check_onnx, export_onnx

    net, _, weights = restore_net(run, use_ema=which == "ema", device=torch.device("cpu"))
    shape, k = run.sample_shape, run.num_classes
    try:
        export_onnx(net, shape, folder / "model.onnx", num_classes=k)
    except ValueError as e:
        raise DiffcliError(f"format=onnx: {e}") from None
    if check:
        diff = check_onnx(folder / "model.onnx", net, shape, num_classes=k)
        console.print(f"onnxruntime vs torch on a batch of 3: max |difference| {diff:.2e}")
    inputs = "x_t (B, " + ", ".join(map(str, shape)) + ") float32, t (B,) int64" + (
        ", y (B,) int64 class labels" if k else "")
    return "ema" if weights == "ema_net" else "raw", [
        "import onnxruntime as ort", "", 'session = ort.InferenceSession("{folder}/model.onnx")',
        f"# inputs: {inputs}; output: prediction ({run.prediction})",
        "prediction = session.run(None, {\"x_t\": x_t, \"t\": t})[0]"]


def _diffusers(run: LoadedRun, folder: Path, which: str,
               sampler: Any) -> tuple[str, list[str]]:
    from diffcli.interop.diffusers_io import write_diffusers_folder

    weights, taken = exported_weights(run, which)
    try:
        scheduler = diffusers_scheduler(run, sampler)
        pipeline = write_diffusers_folder(
            folder, run.config, run.sample_shape, weights, scheduler=scheduler,
            num_classes=run.num_classes, text=run.text_encoder is not None,
            dataset=run.config.get("dataset"), data=run.describe_data(), vae=_vae(run))
    except ValueError as e:
        raise DiffcliError(f"format=diffusers: {e}") from None
    if (run.config.get("model") or {}).get("_target_") == "diffcli.nets.dit.DiT":
        load = _dit_load_lines(run, scheduler[0])
    elif pipeline:
        load = ["from diffusers import DDPMPipeline", "",
                'pipe = DDPMPipeline.from_pretrained("{folder}")',
                "images = pipe(batch_size=16, num_inference_steps=50).images"]
    else:
        label = ", class_labels=y" if run.num_classes is not None else ""
        name, shape = scheduler[0], ", ".join(map(str, run.sample_shape))
        load = ["import torch", f"from diffusers import UNet2DModel, {name}", "",
                'unet = UNet2DModel.from_pretrained("{folder}", subfolder="unet")',
                f'scheduler = {name}.from_pretrained("{{folder}}", subfolder="scheduler")',
                "scheduler.set_timesteps(50)", f"x = torch.randn(16, {shape})",
                "with torch.no_grad():", "    for t in scheduler.timesteps:",
                f"        x = scheduler.step(unet(x, t{label}).sample, t, x).prev_sample"]
        if label:
            load.insert(6, f"y = torch.randint(0, {run.num_classes}, (16,))  # class labels")
        if run.latent is not None:
            load += ["from diffusers import AutoencoderKL",
                     'vae = AutoencoderKL.from_pretrained("{folder}", subfolder="vae")',
                     "images = vae.decode(x / vae.config.scaling_factor).sample"]
    return taken, load + ["# or: diffcli sample ckpt={folder}"]


def _dit_load_lines(run: LoadedRun, name: str) -> list[str]:
    """The model card's lines that sample an exported DiT with diffusers: the transformer and
    scheduler driven by hand (an unconditional DiT's label table is zero: any label works)."""
    k, shape = run.num_classes, ", ".join(map(str, run.sample_shape))
    labels = (f"y = torch.randint(0, {k}, (16,))  # class labels; {k} is the null label" if k
              else "y = torch.zeros(16, dtype=torch.long)  # unconditional: any label, same output")
    out = "net(x, t.expand(16), class_labels=y).sample"
    if run.learned_variance and name != "DDPMScheduler":
        out += f"[:, :{run.sample_shape[0]}]"  # the prediction half; the variances are unused
    load = ["import torch", f"from diffusers import DiTTransformer2DModel, {name}", "",
            'net = DiTTransformer2DModel.from_pretrained("{folder}", subfolder="transformer")',
            f'scheduler = {name}.from_pretrained("{{folder}}", subfolder="scheduler")',
            "scheduler.set_timesteps(50)", f"x = torch.randn(16, {shape})", labels,
            "with torch.no_grad():", "    for t in scheduler.timesteps:",
            f"        x = scheduler.step({out}, t, x).prev_sample"]
    if run.latent is not None:
        load += ["from diffusers import AutoencoderKL",
                 'vae = AutoencoderKL.from_pretrained("{folder}", subfolder="vae")',
                 "images = vae.decode(x / vae.config.scaling_factor).sample"]
    return load


def export(cfg: DictConfig, run: LoadedRun | None = None) -> Path:
    """Export the run of ``ckpt=`` (default the newest; ``run``: its checkpoint, when the
    command's check read it) as ``format``; returns the folder."""
    run = run_to_use(cfg.ckpt, cfg.runs_root, run)
    ckpt = run.path
    fmt, which = str(cfg.format), str(cfg.weights)
    check_exportable(run, fmt, plain(cfg.sampler))
    out = Path(str(cfg.out)) if cfg.out else run_dir_of(ckpt) / "export" / fmt
    folder = OutputFolder(out, overwrite=bool(cfg.overwrite), kind=f"export-{fmt}")
    with folder as tmp:
        if fmt == "safetensors":
            taken, load = _safetensors(run, tmp, which)
        elif fmt == "onnx":
            taken, load = _onnx(run, tmp, which, bool(cfg.check))
        else:
            taken, load = _diffusers(run, tmp, which, plain(cfg.sampler))
        net, _, _ = restore_net(run, use_ema=taken == "ema", device=torch.device("cpu"))
        card = model_card(title=f"{run.config.get('dataset', {}).get('name', 'diffcli')} "
                                f"diffusion model ({fmt})", fmt=fmt, config=run.config,
                          data=run.describe_data(), global_step=run.global_step, weights=taken,
                          source=str(ckpt), parameters=count_parameters(net),
                          evals=eval_results(run_dir_of(ckpt)),
                          load=[line.replace("{folder}", str(folder.path)) for line in load])
        atomic_write_text(tmp / "README.md", card)
    console.print(f"[green]wrote[/] {fmt} export of {ckpt} ({taken} weights, step "
                  f"{run.global_step}) to {folder.path}/")
    return folder.path


__all__ = ["check_exportable", "diffusers_scheduler", "export", "exported_weights",
           "scheduler_of"]
