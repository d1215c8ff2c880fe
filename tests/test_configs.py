"""Every option of every config group composes and is built (as lightning-hydra-template's
test_configs does), through the same safe builder the commands use."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from diffcli.cli import CONF_DIR
from diffcli.cli.resolvers import register_resolvers
from diffcli.components import (
    COMPONENTS,
    build,
    build_autoencoder,
    build_datamodule,
    build_net,
    plain,
)
from diffcli.errors import DatasetNotFoundError, DiffcliError
from diffcli.lit.autoencoder_module import AutoencoderModule
from diffcli.lit.classifier_module import ClassifierModule
from diffcli.lit.module import DiffusionModule
from diffcli.lit.schedulers import build_lr_scheduler
from diffcli.nets.autoencoder import KLAutoencoder
from diffcli.restore import make_sampler

SHAPES = {"mlp": (2,), "unet": (1, 16, 16), "unet_attn": (3, 32, 32), "classifier": (1, 16, 16),
          "mlp_classifier": (2,), "dit": (3, 16, 16), "dit_s": (4, 32, 32), "dit_b": (4, 32, 32),
          "dit_l": (4, 32, 32), "dit_xl": (4, 32, 32), "uvit": (3, 16, 16), "uvit_s": (3, 32, 32)}
# the papers' sizes: shapes only, no memory
ON_META = ("dit_s", "dit_b", "dit_l", "dit_xl", "uvit_s")
CLASSIFIERS = ("classifier", "mlp_classifier")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_with(command: str, *overrides: str) -> DictConfig:
    register_resolvers()  # as the app does first: trainer.max_steps interpolates one
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(command, overrides=list(overrides), return_hydra_config=False)


def test_every_group_has_options_and_every_target_is_registered():
    for group in ("dataset", "model", "schedule", "sampler", "trainer", "logger", "module",
                  "optimizer", "lr_scheduler", "callbacks", "experiment", "task", "loss",
                  "autoencoder", "text_encoder"):
        assert options(group), group
    for group in ("dataset", "model", "schedule", "sampler", "logger", "module", "optimizer",
                  "lr_scheduler", "loss", "autoencoder", "text_encoder"):
        for name in options(group):
            node = OmegaConf.load(CONF_DIR / group / f"{name}.yaml")
            if "_target_" in node:
                assert node._target_ in COMPONENTS[group], f"{group}/{name}"


@pytest.mark.parametrize("name", options("dataset"))
def test_every_dataset_builds(name: str, tmp_path: Path):
    """Built from its yaml; the sets that need downloaded files say where they looked."""
    cfg = compose_with("train", f"dataset={name}")
    if "root" in cfg.dataset:
        cfg.dataset.root = str(tmp_path)
    try:
        dm = build_datamodule(cfg.dataset)
    except DatasetNotFoundError as e:
        assert str(tmp_path) in str(e) and "\n" not in str(e)
        return
    assert dm.kind in ("image", "points") and len(dm.data_shape) in (1, 3)
    batch = next(iter(dm.train_dataloader()))
    x = batch[0] if dm.num_classes is not None else batch  # labelled data: (x, y)
    assert x.shape[1:] == dm.data_shape


@pytest.mark.parametrize("name", options("model"))
def test_every_model_builds(name: str):
    if name in CLASSIFIERS:  # logits (B, K) of noised data
        net = build_net(compose_with("train", f"model={name}").model, SHAPES[name], num_classes=3)
        x = torch.randn(2, *SHAPES[name])
        assert net(x, torch.tensor([0, 999])).shape == (2, 3)
        return
    with torch.device("meta" if name in ON_META else "cpu"):
        net = build_net(compose_with("train", f"model={name}").model, SHAPES[name])
        x = torch.randn(2, *SHAPES[name])
        assert net(x, torch.tensor([0, 999])).shape == x.shape
        conditional = build_net(compose_with("train", f"model={name}").model, SHAPES[name],
                                num_classes=4)  # + the null label 4
        assert conditional(x, torch.tensor([0, 999]), torch.tensor([1, 4])).shape == x.shape


@pytest.mark.parametrize("name", options("schedule"))
def test_every_schedule_builds(name: str):
    schedule = build("schedule", compose_with("train", f"schedule={name}").schedule)
    assert schedule.num_timesteps == 1000


@pytest.mark.parametrize("name", options("sampler"))
def test_every_sampler_builds(name: str):
    schedule = build("schedule", compose_with("train").schedule)
    sampler, steps = make_sampler(compose_with("sample", f"sampler={name}").sampler, schedule)
    assert steps >= 1 and callable(sampler.sample)


@pytest.mark.parametrize("name", options("trainer"))
def test_every_trainer_builds(name: str, tmp_path: Path):
    """Each preset's keys are valid Trainer arguments (GPU presets built on the CPU here)."""
    kwargs = plain(compose_with("train", f"trainer={name}").trainer)
    if not torch.cuda.is_available() and kwargs.get("accelerator") not in ("cpu", "auto"):
        kwargs |= {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "precision": "32"}
        kwargs.pop("strategy", None)
    trainer = L.Trainer(**kwargs, logger=False, default_root_dir=tmp_path,
                        enable_progress_bar=False, enable_model_summary=False)
    assert trainer.max_steps == kwargs.get("max_steps", trainer.max_steps)


@pytest.mark.parametrize("name", options("logger"))
def test_every_logger_builds(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    node = compose_with("train", f"logger={name}").logger
    if not node:
        return  # logger=none: no logging
    node = OmegaConf.to_container(node, resolve=False)
    node["save_dir"] = str(tmp_path)  # the run dir in a real run (a Hydra-time interpolation)
    assert build("logger", node) is not None


@pytest.mark.parametrize("module", options("module"))
@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("lr_scheduler", options("lr_scheduler"))
def test_every_module_optimizer_and_lr_schedule_build(module: str, optimizer: str,
                                                      lr_scheduler: str):
    model = "mlp_classifier" if module == "classifier" else "mlp"
    cfg = compose_with("train", f"module={module}", f"optimizer={optimizer}",
                       f"lr_scheduler={lr_scheduler}", f"model={model}")
    net = KLAutoencoder(data_shape=(1, 8, 8), base_channels=8, groups=4, channel_mults=(1, 2)) \
        if module == "autoencoder" else build_net(cfg.model, (2,), num_classes=2)
    lit = build("module", cfg.module, net=net, schedule=build("schedule", cfg.schedule),
                optimizer=build("optimizer", cfg.optimizer),
                lr_scheduler=build("lr_scheduler", cfg.lr_scheduler))
    expected = {"classifier": ClassifierModule, "autoencoder": AutoencoderModule}
    assert isinstance(lit, expected.get(module, DiffusionModule))
    opt = lit.make_optimizer(lit.net.parameters())
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
    build_lr_scheduler(lit.make_lr_scheduler, opt)


@pytest.mark.parametrize("name", options("autoencoder"))
def test_every_autoencoder_builds_and_round_trips(name: str):
    cfg = compose_with("train", "task=autoencoder", f"autoencoder={name}",
                       "autoencoder.base_channels=8", "autoencoder.groups=4")
    net = build_autoencoder(cfg.autoencoder, (3, 32, 32))
    f = net.downsample_factor
    assert net.latent_shape == (cfg.autoencoder.z_channels, 32 // f, 32 // f)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert net.decode_latent(net.encode_latent(x)).shape == x.shape


@pytest.mark.parametrize("name", options("text_encoder"))
def test_every_text_encoder_builds_or_asks_for_its_folder(name: str):
    node = compose_with("train", f"text_encoder={name}").text_encoder
    if node.get("path", "absent") is None:  # clip: weights from a local folder only
        with pytest.raises(DiffcliError, match="CLIP"):
            build("text_encoder", node)
        return
    encoder = build("text_encoder", node)
    context, mask = encoder(encoder.tokenize(["a handwritten digit seven", ""]))
    assert context.shape == (2, encoder.max_length, encoder.width) and mask.dtype == torch.bool


@pytest.mark.parametrize("name", options("loss"))
def test_every_loss_builds_and_trains_a_step(name: str):
    """Each objective in a module, one loss evaluation with gradients (learned variances
    where the objective trains them)."""
    cfg = compose_with("train", f"loss={name}", "model=mlp",
                       f"model.learn_sigma={'false' if name == 'simple' else 'true'}")
    lit = build("module", cfg.module, net=build_net(cfg.model, (2,)),
                schedule=build("schedule", cfg.schedule), loss=build("loss", cfg.loss))
    x0 = torch.randn(16, 2)
    loss = lit.objective.loss(lit_step(lit, x0), x0)
    loss.backward()
    assert torch.isfinite(loss) and lit.net.out_proj.weight.grad is not None


def lit_step(lit: DiffusionModule, x0: torch.Tensor):
    from diffcli.lit.objectives import Step

    return Step(lit.net, lit.schedule, lit.prediction, lit.learned_variance, "continuous")


@pytest.mark.parametrize("name", options("callbacks"))
def test_every_callbacks_option_builds(name: str, tmp_path: Path):
    from diffcli.workflows.training import build_callbacks

    fid = ["callbacks.fid_proxy.every_n_steps=10", "callbacks.fid_proxy.extractor=standin"]
    on = ["callbacks.phema.every_n_steps=10"] if name == "default" else []
    cfg = compose_with("train", f"callbacks={name}", "callbacks.snapshot.every_n_steps=10",
                       *(fid if name == "default" else []), *on, "dataset=digits")
    context = {"run_dir": tmp_path, "console": None, "seed": 0, "dataset": plain(cfg.dataset)}
    built = build_callbacks(cfg.callbacks, context)
    assert len(built) == len(cfg.callbacks)  # every entry on
    if name == "default":
        assert build_callbacks({**plain(cfg.callbacks), "preview": None,
                                "fid_proxy": {**plain(cfg.callbacks.fid_proxy),
                                              "every_n_steps": None}}, context)


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_composes_and_builds(name: str):
    cfg = compose_with("train", f"experiment={name}")
    if name == "flow_t2i_mnist":  # a latent text-to-image preset: tested in test_objectives_cli
        assert cfg.objective.interpolant == "linear" and cfg.text_encoder is not None
        return
    net = build_net(cfg.model, (3, 32, 32))
    lit = build("module", cfg.module, net=net, schedule=build("schedule", cfg.schedule),
                optimizer=build("optimizer", cfg.optimizer),
                lr_scheduler=build("lr_scheduler", cfg.lr_scheduler), loss=build("loss", cfg.loss),
                objective=build("objective", cfg.objective))
    assert cfg.dataset.name == "cifar10"
    assert lit.ema_decay == (0.99929 if name == "edm_cifar10" else 0.9999)
    if name == "iddpm_cifar10":  # learned variances, L_hybrid, cosine T=4000
        assert lit.learned_variance and lit.objective.name == "hybrid"
        assert lit.schedule.num_timesteps == 4000
    if name == "edm_cifar10":  # Table 1 and 7: EDM's preconditioning, batch 512, 200 Mimg
        assert lit.continuous.name == "edm" and lit.continuous.sigma_data == 0.5
        assert float(lit.schedule.sigmas[-1]) == pytest.approx(80.0)
        assert (cfg.dataset.batch_size, cfg.trainer.max_steps, cfg.model.dropout) == (
            512, 390625, 0.13)
