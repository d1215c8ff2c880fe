"""ONNX export of the diffcli networks, checked against torch with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from diffcli.errors import DiffcliError  # noqa: E402
from diffcli.interop import onnx as onnx_export  # noqa: E402
from diffcli.interop.onnx import check_onnx, export_onnx, onnx_available, onnx_predict  # noqa: E402
from diffcli.nets.mlp import MLP  # noqa: E402
from diffcli.nets.unet import UNet  # noqa: E402

TOL = 1e-4


def _randomise(net: nn.Module) -> nn.Module:
    """Random weights everywhere, so zero-initialised output layers do not make the output 0."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net


def _unet(**kwargs: object) -> UNet:
    config: dict[str, object] = {"in_channels": 1, "base_channels": 8, "channel_mults": (1, 2),
                                 "num_res_blocks": 1, "groups": 4, "image_size": 8}
    config.update(kwargs)
    return _randomise(UNet(**config))  # type: ignore[arg-type, return-value]


# name -> (net factory, sample_shape, num_classes, output shape of one sample)
CASES = {
    "unet": (lambda: _unet(attention_levels=(1,), mid_attention=False), (1, 8, 8), None, (1, 8, 8)),
    # one level (no resampling) keeps this export fast; dropout must be off in the graph
    "unet_classes_sigma": (lambda: _unet(channel_mults=(1,), num_classes=3, learn_sigma=True,
                                         dropout=0.1),
                           (1, 8, 8), 3, (2, 8, 8)),
    "mlp": (lambda: _randomise(MLP(dim=2, hidden=16, depth=2, emb_dim=8, num_classes=4)),
            (2,), 4, (2,)),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    """Each case's network (left in train mode) and its exported ONNX file, made once."""
    folder = tmp_path_factory.mktemp("onnx")
    out: dict[str, tuple[nn.Module, Path]] = {}
    for name, (make, shape, classes, _) in CASES.items():
        net = make().train()
        path = export_onnx(net, shape, folder / "sub" / f"{name}.onnx", num_classes=classes)
        assert net.training, "export_onnx must restore the network's mode"
        out[name] = (net, path)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_matches_torch_at_other_batch_sizes(
        name: str, exported: dict[str, tuple[nn.Module, Path]]) -> None:
    net, path = exported[name]
    _, shape, classes, _ = CASES[name]
    for batch in (1, 3, 5):  # the export traced batch 2
        diff = check_onnx(path, net, shape, num_classes=classes, batch=batch, seed=batch)
        assert diff < TOL, f"{name} batch {batch}: max abs diff {diff}"
    assert net.training
    assert not path.with_suffix(".onnx.tmp").exists()
    # the random weights make the outputs far from 0, so TOL is a real check
    inputs = [torch.randn(4, *shape), torch.randint(0, 1000, (4,))]
    if classes is not None:
        inputs.append(torch.randint(0, classes + 1, (4,)))
    assert onnx_predict(path, *inputs).abs().max() > 100 * TOL


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_graph_names_and_symbolic_batch(
        name: str, exported: dict[str, tuple[nn.Module, Path]]) -> None:
    _, path = exported[name]
    _, shape, classes, out_shape = CASES[name]
    graph = onnx.load(path).graph
    names = [i.name for i in graph.input]
    assert names == (["x_t", "t"] if classes is None else ["x_t", "t", "y"])
    assert [o.name for o in graph.output] == ["prediction"]
    elem = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert elem["x_t"] == onnx.TensorProto.FLOAT
    assert elem["t"] == onnx.TensorProto.INT64
    if classes is not None:
        assert elem["y"] == onnx.TensorProto.INT64
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param, f"{value.name}: batch axis is not symbolic"
        assert not dims[0].dim_value
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == list(shape)
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim[1:]] == list(out_shape)


def test_onnx_predict_checks_labels(exported: dict[str, tuple[nn.Module, Path]]) -> None:
    _, path = exported["unet_classes_sigma"]
    x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([0, 999])
    with pytest.raises(ValueError, match="pass class labels y"):
        onnx_predict(path, x_t, t)
    out = onnx_predict(path, x_t, t, torch.tensor([0, 3]))  # 3 = the null label
    assert out.shape == (2, 2, 8, 8) and out.dtype == torch.float32
    _, path = exported["unet"]
    with pytest.raises(ValueError, match="takes no labels"):
        onnx_predict(path, x_t, t, torch.tensor([0, 1]))


def test_export_errors_are_one_line(tmp_path: Path) -> None:
    net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), groups=4)
    target = tmp_path / "net.onnx"
    with pytest.raises(ValueError, match="opset >= 18"):
        export_onnx(net, (1, 8, 8), target, opset=17)
    with pytest.raises(ValueError, match="num_classes=3.*num_classes=None"):
        export_onnx(net, (1, 8, 8), target, num_classes=3)
    with pytest.raises(ValueError, match="float32"):
        export_onnx(MLP(hidden=8, depth=1, emb_dim=8).double(), (2,), target)
    # 7 x 7 does not fit two levels: the forward's ValueError, reported as one line.
    with pytest.raises(ValueError, match="cannot export UNet to ONNX") as info:
        export_onnx(net, (1, 7, 7), target)
    assert "\n" not in str(info.value) and "divisible by 2" in str(info.value)
    assert net.training
    assert not target.exists() and not list(tmp_path.iterdir())


def test_missing_onnx_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert onnx_available()
    monkeypatch.setattr(onnx_export, "onnx_available", lambda: False)
    with pytest.raises(ModuleNotFoundError, match=r"pip install diffcli\[export\]") as info:
        export_onnx(MLP(hidden=8, depth=1, emb_dim=8), (2,), tmp_path / "m.onnx")
    assert isinstance(info.value, DiffcliError)
