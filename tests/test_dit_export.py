"""A diffcli DiT as diffusers' ``DiTTransformer2DModel``: the same outputs (unconditional and
class-conditional, learned variance or not, patch 2 and 4), the weights' round trip, the
one-line refusals (text DiT, other timestep features, unpatchable sizes), and a tiny DiT run
exported with ``diffcli export format=diffusers`` and read back."""

from __future__ import annotations

import pytest
import torch
from test_bad_inputs import run_in_process
from test_conditional_cli import train_runs

from diffcli.interop.dit_diffusers import (
    TEXT_REFUSAL,
    diffusers_dit_config,
    from_diffusers_dit,
    to_diffusers_dit_state_dict,
)
from diffcli.nets.dit import DiT

diffusers = pytest.importorskip("diffusers")

TINY = {"hidden_size": 32, "depth": 2, "num_heads": 2}


def _randomised(kwargs: dict, shape: tuple[int, int, int], seed: int = 0) -> DiT:
    """A DiT with every parameter redrawn (the zero-initialised layers included)."""
    net = DiT(data_shape=shape, **kwargs).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net


def _diffusers_twin(net: DiT, kwargs: dict, shape: tuple[int, int, int]):
    model = diffusers.DiTTransformer2DModel(**diffusers_dit_config(kwargs, shape)).eval()
    model.load_state_dict(to_diffusers_dit_state_dict(net.state_dict(), kwargs, shape),
                          strict=True)
    return model


@pytest.mark.parametrize("patch", [2, 4])
@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("num_classes", [None, 5])
def test_diffusers_dit_computes_the_same_function(patch, learn_sigma, num_classes):
    kwargs = {**TINY, "patch_size": patch, "learn_sigma": learn_sigma, "num_classes": num_classes}
    shape = (3, 16, 16)
    net = _randomised(kwargs, shape)
    model = _diffusers_twin(net, kwargs, shape)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, *shape, generator=gen)
    t = torch.rand(6, generator=gen) * 999
    if num_classes is None:
        y, labels = None, torch.tensor([0, 1, 0, 1, 1, 0])  # zero table: any label
    else:
        y = labels = torch.tensor([0, 1, 2, 4, 5, 5])  # 5: the null label
    with torch.no_grad():
        ours = net(x, t, y)
        theirs = model(x, t, class_labels=labels).sample
    assert theirs.shape == ours.shape == (6, 6 if learn_sigma else 3, 16, 16)
    assert float(ours.abs().max()) > 0.1  # the randomised net does something
    assert float((ours - theirs).abs().max()) < 1e-4
    # and back: the diffusers weights give the original state dict, bit for bit
    back_kwargs, back_shape, back = from_diffusers_dit(dict(model.config), model.state_dict(),
                                                       learn_sigma=learn_sigma)
    assert back_shape == shape and back_kwargs["num_classes"] == num_classes
    original = net.state_dict()
    assert back.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(back[key], value), key
    rebuilt = DiT(data_shape=back_shape, **back_kwargs).eval()
    rebuilt.load_state_dict(back, strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t, y), ours)


def test_paper_timestep_basis_and_text_and_unpatchable_sizes_are_refused_in_one_line():
    shape = (3, 16, 16)
    for kwargs, match in [({"context_dim": 8}, "text-conditioned DiT"),
                          ({"time_freq_shift": 0.0}, "time_freq_shift=0.0"),
                          ({"mlp_ratio": 2.0}, "mlp_ratio=2.0")]:
        with pytest.raises(ValueError, match=match) as info:
            diffusers_dit_config({**TINY, **kwargs}, shape)
        assert "\n" not in str(info.value)
    for bad in [(3, 16, 12), (3, 15, 15)]:
        with pytest.raises(ValueError, match="square images whose side is a multiple"):
            diffusers_dit_config(TINY, bad)
    assert "format=safetensors" in TEXT_REFUSAL
    from diffcli.interop.diffusers_io import DIT_TARGET, diffusers_layout

    with pytest.raises(ValueError, match="text-conditioned DiT"):
        diffusers_layout({"model": {"_target_": DIT_TARGET, **TINY}}, shape, num_classes=None,
                         text=True)


def test_differing_per_block_embeddings_are_refused():
    kwargs, shape = {**TINY, "num_classes": 3}, (1, 8, 8)
    model = _diffusers_twin(_randomised(kwargs, shape), kwargs, shape)
    state = model.state_dict()
    key = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias"
    state[key] = state[key] + 1
    with pytest.raises(ValueError, match="shared by every block"):
        from_diffusers_dit(dict(model.config), state)


SMALL = ["dataset=digits", "dataset.image_size=8", "model=dit", "model.hidden_size=32",
         "model.depth=2", "model.num_heads=2", "logger=none", "trainer.max_steps=2",
         "callbacks.preview=null", "model.patch_size=4", "conditional=true"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return train_runs(tmp_path_factory.mktemp("dit_export"), {"dit": ["train", *SMALL]})


def test_a_dit_run_exports_to_diffusers_and_reads_back(runs, monkeypatch, capsys):
    import diffcli

    ckpt, cwd = runs["dit"], runs["cwd"]
    folder = cwd / "exported"
    code, lines = run_in_process(["export", f"ckpt={ckpt}", "format=diffusers",
                                  "sampler=ddim", f"out={folder}"], cwd, monkeypatch, capsys)
    assert code in (0, None), lines
    assert {"transformer", "scheduler", "README.md"} <= {p.name for p in folder.iterdir()}
    assert "DiTTransformer2DModel.from_pretrained" in (folder / "README.md").read_text()
    model = diffusers.DiTTransformer2DModel.from_pretrained(folder / "transformer").eval()
    assert isinstance(diffusers.DDIMScheduler.from_pretrained(folder / "scheduler"),
                      diffusers.DDIMScheduler)
    ours = diffcli.load(ckpt).opened.network.eval()  # EMA weights, as exported
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 1, 8, 8, generator=gen), torch.tensor([0.0, 10.0, 500.0, 999.0])
    y = torch.tensor([0, 3, 9, 10])  # 10: the null label of digits' 10 classes
    with torch.no_grad():
        diff = (ours(x, t, y) - model(x, t, class_labels=y).sample).abs().max()
    assert float(diff) < 1e-4
    imported = diffcli.load(folder).opened.network.state_dict()
    original = ours.state_dict()
    assert imported.keys() == original.keys()
    for key, value in imported.items():
        assert torch.equal(value, original[key]), key
    code, lines = run_in_process(["sample", f"ckpt={folder}", "sampler=ddim", "steps=2", "n=4",
                                  "classes=0-1"], cwd, monkeypatch, capsys)
    assert code in (0, None), lines
