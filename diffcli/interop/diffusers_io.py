"""diffusers folders: a diffcli U-Net as a ``DDPMPipeline`` (``unet/`` + ``scheduler/``), and a
``UNet2DModel`` folder (exported here, or e.g. google/ddpm-cifar10-32) read back as a diffcli
checkpoint; a diffcli DiT as ``transformer/`` (``DiTTransformer2DModel``, mapped by
:mod:`diffcli.interop.dit_diffusers`) + ``scheduler/``, read back the same way.

The U-Net's layout and weights map through :mod:`diffcli.interop.diffusers_layout`; the noise
schedule maps onto the scheduler config (``linear`` betas, ``squaredcos_cap_v2`` for the cosine
schedule of Nichol & Dhariwal 2021, else the exact ``trained_betas``), with the prediction type
and the ``trailing`` timestep grid diffcli's samplers use, so a diffusers scheduler of the same
algorithm takes the same steps as ``diffcli sample clip_denoised=false``. A flow-matching model
goes with ``FlowMatchEulerDiscreteScheduler`` (:mod:`diffcli.interop.diffusers_flow`), both ways.
Weights are read from ``diffusion_pytorch_model.safetensors`` only: a ``.bin`` is a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from diffcli.errors import CheckpointError
from diffcli.files import atomic_write_text, dumps_json
from diffcli.interop.diffusers_flow import FLOW_SCHEDULERS, flow_objective_node
from diffcli.interop.diffusers_layout import (
    diffusers_unet_config,
    from_diffusers_config,
    from_diffusers_state_dict,
    to_diffusers_state_dict,
)

UNET_TARGET = "diffcli.nets.unet.UNet"
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SCHEDULERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler",
              "dpmpp_2m": "DPMSolverMultistepScheduler"}
DIFFCLI_FILE = "diffcli.json"  # the run's dataset and classes, for reading the folder back
DIT_TARGET = "diffcli.nets.dit.DiT"
UVIT_TARGET = "diffcli.nets.uvit.UViT"
LINEAR = "diffcli.diffusion.schedules.linear_schedule"
COSINE = "diffcli.diffusion.schedules.cosine_schedule"


def scheduler_config(schedule: dict[str, Any], betas: torch.Tensor, prediction: str,
                     learned_variance: bool, sampler: str) -> tuple[str, dict]:
    """(diffusers scheduler class name, its config) for a diffcli schedule node and its
    ``betas`` (T,), with ``sampler`` one of :data:`SCHEDULERS`. x0 is not clipped: diffusers'
    DDIM clips x0 but keeps the network's noise, diffcli's samplers recompute the noise from the
    clipped x0, so the two agree only unclipped (``diffcli sample clip_denoised=false``)."""
    if sampler not in SCHEDULERS:
        raise ValueError(f"sampler={sampler}: diffusers schedulers exist for "
                         f"{', '.join(SCHEDULERS)}")
    T = int(betas.numel())
    cfg: dict[str, Any] = {"num_train_timesteps": T, "prediction_type":
                           PREDICTION_TYPES[prediction], "timestep_spacing": "trailing",
                           "steps_offset": 0, "clip_sample": False,
                           "beta_start": 0.0001, "beta_end": 0.02, "trained_betas": None}
    target = schedule.get("_target_")
    if target == LINEAR:
        cfg |= {"beta_schedule": "linear", "beta_start": float(schedule.get("beta_start", 1e-4)),
                "beta_end": float(schedule.get("beta_end", 0.02))}
    elif target == COSINE and float(schedule.get("s", 0.008)) == 0.008 and \
            float(schedule.get("max_beta", 0.999)) == 0.999:
        cfg["beta_schedule"] = "squaredcos_cap_v2"
    else:
        cfg |= {"beta_schedule": "linear", "trained_betas": betas.double().tolist()}
    name = SCHEDULERS[sampler]
    if name == "DDPMScheduler":
        cfg["variance_type"] = "learned_range" if learned_variance else "fixed_small"
    elif name == "DPMSolverMultistepScheduler":
        cfg |= {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True,
                "thresholding": False}
        cfg.pop("clip_sample")
    return name, cfg


def schedule_node(config: dict[str, Any]) -> dict[str, Any]:
    """The diffcli schedule node of a diffusers scheduler config; ValueError (one line) for a
    schedule diffcli does not have."""
    T = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        raise ValueError("scheduler trained_betas: a custom beta list is not one of diffcli's "
                         "schedules (linear, squaredcos_cap_v2 are)")
    kind = config.get("beta_schedule", "linear")
    if kind == "linear":
        return {"_target_": LINEAR, "num_timesteps": T,
                "beta_start": float(config.get("beta_start", 1e-4)),
                "beta_end": float(config.get("beta_end", 0.02))}
    if kind == "squaredcos_cap_v2":
        return {"_target_": COSINE, "num_timesteps": T, "s": 0.008, "max_beta": 0.999}
    raise ValueError(f"scheduler beta_schedule={kind}: diffcli has linear and "
                     "squaredcos_cap_v2 (cosine)")


def noise_model(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, str,
                                                 bool]:
    """What a diffusers scheduler config says of the network beside it: (diffcli schedule node,
    objective node or None for the DDPM chain, prediction, learned variance). A flow scheduler
    (:data:`~diffcli.interop.diffusers_flow.FLOW_SCHEDULERS`) reads as ``objective=flow`` (the
    schedule node is then the default one a flow run carries, unused). ValueError (one line)
    for what diffcli does not have."""
    name = str(config.get("_class_name", ""))
    if name in FLOW_SCHEDULERS:
        node = {"_target_": LINEAR, "num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
        return node, flow_objective_node(config), "eps", False
    if name.startswith(("FlowMatch", "EDM")):
        raise ValueError(f"scheduler {name}: diffcli reads the DDPM chain's schedulers (beta "
                         f"schedules) and {' / '.join(FLOW_SCHEDULERS)}")
    prediction = {v: k for k, v in PREDICTION_TYPES.items()}.get(
        config.get("prediction_type", "epsilon"))
    if prediction is None:
        raise ValueError(f"scheduler prediction_type={config.get('prediction_type')}: "
                         "diffcli's networks predict epsilon, sample or v_prediction")
    learned = config.get("variance_type") in ("learned", "learned_range")
    return schedule_node(config), None, prediction, learned


def _refuse_kind(text: bool) -> None:
    if text:
        raise ValueError("a text-to-image model needs UNet2DConditionModel with diffcli's text "
                         "encoder, which this export does not write; use format=safetensors")


def diffusers_layout(config: dict[str, Any], data_shape: tuple[int, ...], *,
                     num_classes: int | None, text: bool) -> dict[str, Any]:
    """The ``UNet2DModel`` config of a run's network (its ``config``; ``data_shape``: what the
    U-Net generates, latents for a latent model), or ValueError (one line) for a model that a
    diffusers folder cannot hold. A DiT gets its ``DiTTransformer2DModel`` config
    (:mod:`diffcli.interop.dit_diffusers`)."""
    model = config.get("model") or {}
    if model.get("_target_") == DIT_TARGET:
        return _dit_layout(model, data_shape, num_classes=num_classes, text=text)[0]
    if model.get("_target_") == UVIT_TARGET:
        raise ValueError("model=UViT: diffusers has no U-ViT model; export format=safetensors")
    _refuse_kind(text)
    if model.get("_target_") != UNET_TARGET:
        raise ValueError(f"model={str(model.get('_target_')).rsplit('.', 1)[-1]}: diffusers' "
                         "UNet2DModel takes images; 2-D point models export as safetensors")
    kwargs = {k: v for k, v in model.items() if k != "_target_"}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return diffusers_unet_config(kwargs, data_shape)


def write_diffusers_folder(folder: Path, config: dict[str, Any], data_shape: tuple[int, ...],
                           weights: dict[str, torch.Tensor], *,
                           scheduler: tuple[str, dict[str, Any]], num_classes: int | None,
                           text: bool, dataset: dict[str, Any] | None,
                           data: dict[str, Any] | None, vae: Any = None) -> bool:
    """Write ``unet/`` and ``scheduler/`` into ``folder`` (plus ``model_index.json`` of a
    ``DDPMPipeline`` when the model is unconditional and in pixel space: returns whether it
    did; a latent model's autoencoder, ``vae``, goes to ``vae/``). ``data_shape``: what the
    U-Net generates; ``scheduler``: (diffusers class name, its config): :func:`scheduler_config`
    or ``FLOW_SCHEDULER`` with :func:`~diffcli.interop.diffusers_flow.flow_scheduler_config`.
    ValueError (one line) for a model diffusers cannot express."""
    import diffusers
    from diffusers import DDPMPipeline, UNet2DModel

    if (config.get("model") or {}).get("_target_") == DIT_TARGET:
        _write_dit_folder(folder, config, data_shape, weights, scheduler=scheduler,
                          num_classes=num_classes, text=text, dataset=dataset, data=data,
                          vae=vae)
        return False
    unet = UNet2DModel(**diffusers_layout(config, data_shape, num_classes=num_classes,
                                          text=text))
    kwargs = {k: v for k, v in (config.get("model") or {}).items() if k != "_target_"}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    unet.load_state_dict(to_diffusers_state_dict(weights, kwargs, data_shape), strict=True)
    name, sched_cfg = scheduler
    made = getattr(diffusers, name).from_config(sched_cfg)
    pipeline = num_classes is None and vae is None
    if pipeline:
        DDPMPipeline(unet=unet, scheduler=made).save_pretrained(folder, safe_serialization=True)
    else:
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        made.save_pretrained(folder / "scheduler")
    if vae is not None:
        vae.save_pretrained(folder / "vae", safe_serialization=True)
    atomic_write_text(folder / DIFFCLI_FILE, dumps_json({"dataset": dataset, "data": data}))
    return pipeline


def _dit_layout(model: dict[str, Any], data_shape: tuple[int, ...], *, num_classes: int | None,
                text: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``DiTTransformer2DModel`` config, the DiT's kwargs) of a DiT ``model`` node; ValueError
    (one line) for a text-conditioned DiT or one diffusers' DiT cannot compute exactly."""
    from diffcli.interop.dit_diffusers import TEXT_REFUSAL, diffusers_dit_config

    if text or model.get("context_dim") is not None:
        raise ValueError(TEXT_REFUSAL)
    kwargs = {k: v for k, v in model.items() if k != "_target_"}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return diffusers_dit_config(kwargs, data_shape), kwargs


def _write_dit_folder(folder: Path, config: dict[str, Any], data_shape: tuple[int, ...],
                      weights: dict[str, torch.Tensor], *, scheduler: tuple[str, dict[str, Any]],
                      num_classes: int | None, text: bool, dataset: dict[str, Any] | None,
                      data: dict[str, Any] | None, vae: Any = None) -> None:
    """A DiT run as ``transformer/`` (``DiTTransformer2DModel``), ``scheduler/`` and, for a
    latent model, ``vae/``: the U-Net folder's layout with ``transformer/`` for ``unet/``
    (no ``model_index.json``: diffusers' ``DiTPipeline`` hard-codes ImageNet's 1000 labels and
    the SD VAE's scale)."""
    import diffusers
    from diffusers import DiTTransformer2DModel

    from diffcli.interop.dit_diffusers import to_diffusers_dit_state_dict

    dit_config, kwargs = _dit_layout(config.get("model") or {}, data_shape,
                                     num_classes=num_classes, text=text)
    transformer = DiTTransformer2DModel(**dit_config)
    transformer.load_state_dict(to_diffusers_dit_state_dict(weights, kwargs, data_shape),
                                strict=True)
    name, sched_cfg = scheduler
    transformer.save_pretrained(folder / "transformer", safe_serialization=True)
    getattr(diffusers, name).from_config(sched_cfg).save_pretrained(folder / "scheduler")
    if vae is not None:
        vae.save_pretrained(folder / "vae", safe_serialization=True)
    atomic_write_text(folder / DIFFCLI_FILE, dumps_json({"dataset": dataset, "data": data}))


def _read_dit_folder(folder: Path, dit_dir: Path) -> dict[str, Any]:
    """:func:`read_diffusers_folder` for a ``DiTTransformer2DModel`` (``transformer/`` of an
    exported DiT run, or the folder itself)."""
    from diffcli.interop.dit_diffusers import from_diffusers_dit

    dit_cfg, sched = _json(dit_dir / "config.json"), _scheduler(folder, dit_dir)
    try:
        schedule, objective, prediction, learned = noise_model(sched)
        kwargs, shape, state = from_diffusers_dit(dit_cfg, _weights(dit_dir),
                                                  learn_sigma=learned)
    except ValueError as e:
        raise CheckpointError(f"{folder}: cannot be read as a diffcli model: {e}") from None
    return _checkpoint(folder, DIT_TARGET, kwargs, shape, state,
                       (schedule, objective, prediction))


def _dit_folder(folder: Path) -> Path | None:
    """The folder holding a ``DiTTransformer2DModel`` (``folder/transformer`` or ``folder``),
    or None when ``folder`` holds none."""
    for candidate in (folder / "transformer", folder):
        path = candidate / "config.json"
        if path.is_file() and _json(path).get("_class_name") == "DiTTransformer2DModel":
            return candidate
    return None


def autoencoder_kl(ae_config: dict[str, Any], weights: dict[str, torch.Tensor],
                   image_shape: tuple[int, int, int], scale_factor: float) -> Any:
    """diffcli's KL autoencoder (its config node and weights) as a diffusers ``AutoencoderKL``
    with ``scaling_factor`` = the latent model's scale factor; ValueError (one line) for an
    autoencoder that AutoencoderKL cannot express."""
    from diffusers import AutoencoderKL

    from diffcli.interop.diffusers_vae import autoencoder_kl_config, to_diffusers_vae_state_dict

    kwargs = vae_kwargs(ae_config)
    vae = AutoencoderKL(**autoencoder_kl_config(kwargs, image_shape, scale_factor))
    vae.load_state_dict(to_diffusers_vae_state_dict(weights, kwargs, image_shape), strict=True)
    return vae


def vae_kwargs(ae_config: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a KL autoencoder's config node; ValueError for another kind."""
    if ae_config.get("_target_") != "diffcli.nets.autoencoder.KLAutoencoder":
        raise ValueError(f"autoencoder={str(ae_config.get('_target_')).rsplit('.', 1)[-1]}: "
                         "diffusers' AutoencoderKL holds KL autoencoders only; use "
                         "format=safetensors")
    return {k: v for k, v in ae_config.items() if k != "_target_"}


def _unet_folder(folder: Path) -> Path:
    """The folder holding the UNet2DModel: ``folder/unet`` of a pipeline, or ``folder``."""
    for candidate in (folder / "unet", folder):
        if (candidate / "config.json").is_file():
            return candidate
    raise CheckpointError(f"{folder} is not a diffcli run or a diffusers folder (no "
                          "checkpoints/last.ckpt, unet/config.json or config.json)")


def _json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it ({e})") from None
    if not isinstance(found, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return found


def _scheduler(folder: Path, unet_dir: Path) -> dict[str, Any]:
    for candidate in (folder / "scheduler", unet_dir.parent / "scheduler"):
        if (candidate / "scheduler_config.json").is_file():
            return _json(candidate / "scheduler_config.json")
    raise CheckpointError(f"{folder}: no scheduler/scheduler_config.json beside the U-Net "
                          "(the noise schedule and what the network predicts come from it)")


def _weights(unet_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = unet_dir / "diffusion_pytorch_model.safetensors"
    if not path.is_file():
        pickled = (unet_dir / "diffusion_pytorch_model.bin").is_file()
        raise CheckpointError(f"{unet_dir}: no diffusion_pytorch_model.safetensors" + (
            " (a .bin is a pickle and is not read; convert it with diffusers' save_pretrained("
            "safe_serialization=True) where you trust it)" if pickled else ""))
    return load_file(str(path))


def _image_data(folder: Path, shape: tuple[int, int, int]) -> dict[str, Any]:
    """The data description of what the U-Net generates (``shape``): images, or with a
    ``vae/`` beside it the latents of that AutoencoderKL (read as ``latent.pretrained``)."""
    from diffcli.nets.latent import pretrained_sha256

    vae = folder / "vae"
    if not (vae / "config.json").is_file():
        return {"kind": "image", "shape": list(shape)}
    config = _json(vae / "config.json")
    f = 2 ** (len(config.get("block_out_channels", [0])) - 1)
    sha = pretrained_sha256(vae)
    if sha is None:
        raise CheckpointError(f"{vae}: no diffusion_pytorch_model.safetensors (a .bin is a "
                              "pickle and is not read)")
    c, h, w = shape
    return {"kind": "image", "shape": [int(config.get("in_channels", 3)), h * f, w * f],
            "latent": {"shape": [c, h, w], "scale_factor": float(config.get(
                "scaling_factor") or 1.0), "source": str(vae.resolve()), "sha256": sha,
                "pretrained": True}}


def read_diffusers_folder(folder: Path) -> dict[str, Any]:
    """A diffusers ``UNet2DModel`` folder (or a pipeline folder with ``unet/`` and
    ``scheduler/``) as the checkpoint-shaped mapping of a diffcli run (see
    :func:`diffcli.interop.safetensors_io.read_safetensors`). A ``DiTTransformer2DModel``
    folder (``transformer/``) reads as a diffcli DiT."""
    dit_dir = _dit_folder(folder)
    if dit_dir is not None:
        return _read_dit_folder(folder, dit_dir)
    unet_dir = _unet_folder(folder)
    unet_cfg, sched = _json(unet_dir / "config.json"), _scheduler(folder, unet_dir)
    try:
        schedule, objective, prediction, learned = noise_model(sched)
        kwargs, shape = from_diffusers_config(unet_cfg, learn_sigma=learned)
        state = from_diffusers_state_dict(_weights(unet_dir), kwargs, shape)
    except ValueError as e:
        raise CheckpointError(f"{folder}: cannot be read as a diffcli model: {e}") from None
    return _checkpoint(folder, UNET_TARGET, kwargs, shape, state,
                       (schedule, objective, prediction))


__all__ = ["autoencoder_kl", "diffusers_layout", "noise_model", "read_diffusers_folder",
           "schedule_node", "scheduler_config", "vae_kwargs", "write_diffusers_folder"]


def _checkpoint(folder: Path, target: str, kwargs: dict[str, Any], shape: tuple[int, int, int],
                state: dict[str, torch.Tensor],
                noise: tuple[dict[str, Any], dict[str, Any] | None, str]) -> dict[str, Any]:
    """The diffcli checkpoint of a diffusers folder's network: ``target`` built with ``kwargs``
    (its ``num_classes`` moves to the data), weights ``state``, ``noise`` = (schedule node,
    objective node or None, prediction) from :func:`noise_model`; the run's dataset and classes
    from the folder's ``diffcli.json`` when it has one."""
    schedule, objective, prediction = noise
    extra = _json(folder / DIFFCLI_FILE) if (folder / DIFFCLI_FILE).is_file() else {}
    num_classes = kwargs.pop("num_classes", None)
    data = {**(extra.get("data") or {}), **_image_data(folder, shape)}
    c, h, _ = data["shape"]
    if num_classes is not None and "num_classes" not in data:
        data = {**data, "num_classes": num_classes,
                "class_names": [str(i) for i in range(num_classes)]}
    dataset = extra.get("dataset") or {"_target_": "diffcli.data.registry.make_datamodule",
                                       "name": "imagefolder", "root": None, "image_size": h,
                                       "channels": c}
    config = {"model": {"_target_": target, **kwargs}, "schedule": schedule,
              "module": {"prediction": prediction}, "dataset": dataset, "task": "diffusion",
              "conditional": num_classes is not None}
    if objective is not None:
        config["objective"] = objective
    return {"diffcli": {"config": config, "data": data},
            "state_dict": {f"net.{k}": v for k, v in state.items()}, "global_step": 0}
