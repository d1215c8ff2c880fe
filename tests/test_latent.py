"""The latent space and text conditioning, in-process: scale factor, latent cache, diffusers'
AutoencoderKL from a local folder, captions, and prompt-conditioned sampling with
classifier-free guidance on the empty prompt (exact references, tiny random networks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_text import _perturb_, _save_tiny_clip, _text_net
from torch import Tensor

from diffcli.data.captions import (
    CaptionedDataset,
    fill_template,
    folder_captions,
    number_word,
    read_metadata,
    template_captions,
)
from diffcli.data.datamodule import TensorDataModule
from diffcli.diffusion.denoiser import Denoiser
from diffcli.diffusion.generate import generate
from diffcli.diffusion.guidance import ClassifierFreeGuidance
from diffcli.diffusion.samplers.ddim import DDIM
from diffcli.diffusion.schedules import linear_schedule
from diffcli.errors import DiffcliError
from diffcli.nets.autoencoder import KLAutoencoder
from diffcli.nets.latent import LatentCodec, load_pretrained_autoencoder, scale_factor_of
from diffcli.workflows import latent_space as latent


def _codec(seed: int = 0) -> LatentCodec:
    torch.manual_seed(seed)
    ae = KLAutoencoder(data_shape=(1, 8, 8), z_channels=2, base_channels=8, groups=4,
                       channel_mults=(1, 2))
    _perturb_(ae, 0.05)  # a posterior with a non-trivial mean and std
    return LatentCodec(ae, 1.0)


def _images(n: int = 512) -> TensorDataModule:
    gen = torch.Generator().manual_seed(0)
    return TensorDataModule(torch.rand((n, 1, 8, 8), generator=gen) * 2 - 1, batch_size=64,
                            labels=torch.arange(n) % 3, class_names=["a", "b", "c"])


def test_scale_factor_gives_unit_std_on_the_cached_latents(tmp_path):
    codec = _codec()
    dm = latent.cached_datamodule(_images(), codec, "a" * 64, tmp_path, {"name": "rand"})
    assert dm.data_shape == (4, 4, 4)  # mean and std of 2 latent channels at 8/2
    codec.scale_factor = latent._scale(None, None, None, dm, codec, cached=True)
    torch.manual_seed(1)  # a fresh draw of the posterior samples
    z = torch.cat([codec.from_moments(x) for x, _ in dm.train_dataloader()])
    assert abs(float(z.std()) - 1) < 0.05
    assert scale_factor_of(torch.full((4, 2), 3.0) + torch.tensor([0.0, 2.0])) == \
        pytest.approx(1 / float(torch.tensor([3.0, 5.0]).repeat(4).std()))


def test_the_latent_cache_is_reused_only_for_the_same_autoencoder_hash(tmp_path, monkeypatch):
    codec, dm, key = _codec(), _images(64), {"name": "rand"}
    first = latent.cached_datamodule(dm, codec, "a" * 64, tmp_path, key)
    calls = []
    real = latent.encode_all
    monkeypatch.setattr(latent, "encode_all", lambda *a: calls.append(1) or real(*a))
    again = latent.cached_datamodule(dm, codec, "a" * 64, tmp_path, key)
    assert calls == [] and torch.equal(again.dataset.dataset.data, first.dataset.dataset.data)
    latent.cached_datamodule(dm, codec, "b" * 64, tmp_path, key)  # another autoencoder
    assert calls == [1] and len(list(tmp_path.glob("*.pt"))) == 2
    # a file under the right name but stamped with another hash is not trusted
    name_a = tmp_path / latent.cache_key(key, "a" * 64)
    name_b = tmp_path / latent.cache_key(key, "b" * 64)
    name_a.write_bytes(name_b.read_bytes())
    assert latent.read_cache(name_a, "a" * 64) is None
    latent.cached_datamodule(dm, codec, "a" * 64, tmp_path, key)
    assert calls == [1, 1]
    assert again.num_classes == 3 and again.head(4)[1].tolist() == [0, 1, 2, 0]


def test_cached_moments_keep_the_captions():
    codec = _codec()
    source = CaptionedDataset(_images(8).dataset, [f"c{i}" for i in range(8)])
    moments = torch.zeros(8, 4, 4, 4)
    dm = latent._moments_datamodule(TensorDataModule(torch.zeros(8, 1, 8, 8)), moments)
    assert dm.captioned is False
    dm.dataset = CaptionedDataset(dm.dataset, source.captions)
    assert dm.captioned and dm.head(3)[1] == ["c0", "c1", "c2"]
    assert codec.from_moments(moments).shape == (8, 2, 4, 4)


def _tiny_vae_folder(folder: Path, scaling: float = 0.5) -> Path:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=8,
        scaling_factor=scaling)
    vae.save_pretrained(str(folder))
    return folder


def test_a_diffusers_autoencoder_loads_from_a_local_folder(tmp_path):
    folder = _tiny_vae_folder(tmp_path / "vae")
    ae, sha = load_pretrained_autoencoder(folder, (1, 8, 8))
    assert ae.latent_shape == (4, 4, 4) and ae.downsample_factor == 2
    assert ae.scaling_factor == 0.5 and len(sha) == 64
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    z = ae.encode_latent(x, sample=False)
    assert z.shape == (2, 4, 4, 4) and ae.decode_latent(z).shape == (2, 1, 8, 8)
    assert load_pretrained_autoencoder(tmp_path, (1, 8, 8))[1] == sha  # pipeline folder: vae/
    with pytest.raises(ValueError, match="no such folder"):
        load_pretrained_autoencoder(tmp_path / "nothing", (1, 8, 8))
    with pytest.raises(ValueError, match="not divisible"):
        load_pretrained_autoencoder(folder, (1, 9, 9))
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="not an AutoencoderKL"):
        load_pretrained_autoencoder(folder, (1, 8, 8))


def test_captions_from_templates_and_metadata(tmp_path):
    from PIL import Image

    assert number_word("7") == "seven" and number_word("cat") == "cat"
    assert fill_template("a handwritten digit {word}", "3") == "a handwritten digit three"
    assert template_captions([1, 0, 1], ["cat", "dog"], "a photo of a {name}") == \
        ["a photo of a dog", "a photo of a cat", "a photo of a dog"]
    with pytest.raises(DiffcliError, match="placeholders"):
        fill_template("{colour}", "3")
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.png", "sub/c.png"):
        Image.new("L", (4, 4)).save(tmp_path / name)
    lines = [{"file_name": "sub/c.png", "text": "third"}, {"file_name": "a.png", "text": "first"},
             {"file_name": "b.png", "text": "second"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n\n")
    assert folder_captions(tmp_path) == ["first", "second", "third"]  # the dataset's order
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": 3}\n')
    with pytest.raises(DiffcliError, match='line 1 \\(a.png\\) has no "text"'):
        read_metadata(tmp_path / "metadata.jsonl")
    (tmp_path / "metadata.jsonl").write_text("not json\n")
    with pytest.raises(DiffcliError, match="line 1 is not JSON"):
        read_metadata(tmp_path / "metadata.jsonl")


def _sample(den: Denoiser, labels: Tensor | None) -> Tensor:
    return generate(DDIM(steps=4, clip_denoised=True), den, (1, 8, 8), [0, 1], 2,
                    torch.device("cpu"), labels=labels)


@torch.no_grad()
def test_prompts_change_samples_and_the_empty_prompt_is_the_null_condition():
    net = _text_net().eval()
    _perturb_(net)
    schedule = linear_schedule(num_timesteps=50)
    null = net.null_tokens()
    assert torch.equal(net.tokenize([""])[0], null)  # the empty prompt: the null condition
    base = Denoiser(net, schedule)
    guided = ClassifierFreeGuidance(net=net, schedule=schedule, scale=4.0, null=null)
    seven = net.tokenize(["a handwritten digit seven"] * 2)
    one = net.tokenize(["a handwritten digit one"] * 2)
    unconditional = _sample(base, None)
    assert not torch.equal(_sample(guided, seven), _sample(guided, one))
    assert not torch.allclose(_sample(guided, seven), unconditional)
    # guidance toward the empty prompt at any scale is the unconditional model
    # (up to float rounding of a batch of 4 vs 2, times w = 4)
    assert torch.allclose(_sample(guided, null.expand(2, -1)), unconditional, atol=1e-4)
    with pytest.raises(ValueError, match="integer tensors of shape"):
        guided.with_labels(torch.zeros(2, 3, dtype=torch.long))


def test_clip_and_pretrained_autoencoder_runs_from_the_command_line(tmp_path, monkeypatch,
                                                                    capsys):
    from test_bad_inputs import run_in_process

    clip = tmp_path / "clip"
    _save_tiny_clip(clip, clip)
    _tiny_vae_folder(tmp_path / "sd" / "vae")
    args = ["train", "dataset=digits", "logger=none", "trainer.max_steps=1", "text_encoder=clip",
            f"text_encoder.path={clip}", f"latent.pretrained={tmp_path / 'sd'}",
            "model.base_channels=8", "model.groups=4", "model.channel_mults=[1]",
            "callbacks.preview=null", f"hydra.run.dir={tmp_path / 'run'}"]
    code, lines = run_in_process(args, tmp_path, monkeypatch, capsys)
    assert code in (0, None), lines
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    from diffcli.checkpoint import load_checkpoint

    run = load_checkpoint(ckpt)
    assert run.latent.pretrained and run.latent.scale_factor == 0.5
    assert not any("clip" in k for k in run.state_dict)  # CLIP is loaded from its folder
    code, lines = run_in_process(["sample", f"ckpt={ckpt}", "n=2", "steps=2", "sampler=ddim",
                                  "prompt=a cat", "guidance=2"], tmp_path, monkeypatch, capsys)
    assert code in (0, None), lines
    assert (tmp_path / "run" / "samples" / "ddim-2-w2" / "grid.png").is_file()


def test_a_vq_autoencoder_caches_its_pre_quantization_latents():
    from diffcli.nets.autoencoder import VQAutoencoder

    torch.manual_seed(0)
    vq = VQAutoencoder(data_shape=(1, 8, 8), z_channels=2, base_channels=8, groups=4,
                       channel_mults=(1, 2), n_embed=8)
    codec = LatentCodec(vq, 2.0)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    moments = codec.moments(x)
    assert moments.shape == (3, 4, 4, 4) and not moments[:, 2:].any()  # deterministic: std 0
    assert torch.allclose(codec.from_moments(moments), codec.encode(x))
    assert codec.decode(codec.encode(x)).shape == x.shape
