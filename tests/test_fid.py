"""FID: the Frechet distance, streaming statistics, extractors, the reference cache, the
missing-weights message, the training proxy, and `diffcli eval-fid` end to end (offline: the
stand-in extractor, and random Inception weights only to exercise the Inception path)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import scipy.linalg
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from rich.console import Console
from test_cli import TINY_UNET, assert_one_line_error
from test_cli import run_here as run
from torch_fidelity.metric_fid import fid_statistics_to_metric

from diffcli.cli import CONF_DIR
from diffcli.data.datamodule import TensorDataModule
from diffcli.diffusion.samplers.ddim import DDIM
from diffcli.diffusion.schedules import linear_schedule
from diffcli.errors import DiffcliError
from diffcli.eval import cache as fid_cache
from diffcli.eval.cache import (
    DatasetReferenceStats,
    RefStats,
    cache_path,
    reference_key,
    reference_statistics,
)
from diffcli.eval.extractors import (
    INCEPTION,
    INCEPTION_WEIGHTS_FILE,
    STANDIN,
    Extractor,
    WeightsNotFoundError,
    open_extractor,
)
from diffcli.eval.features import extract_features
from diffcli.eval.fid import GaussianStats, StreamingStats, frechet_distance
from diffcli.eval.images import DatasetRef, TensorImages, open_samples
from diffcli.eval.metrics import compute_metrics, parse_metrics
from diffcli.lit.fid_callback import FIDProxy
from diffcli.lit.module import DiffusionModule
from diffcli.nets.unet import UNet

WEIGHTS_MSG = ("weights-inception-2015-12-05-6726825d.pth", "weights=<path to")


@pytest.fixture(autouse=True)
def _offline_caches(tmp_path_factory, monkeypatch) -> Path:
    """Every test (and every CLI process it starts) sees empty caches: no Inception weights,
    no reference statistics from the user's ~/.cache."""
    home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    return home


def random_gaussian(d: int, rng: np.random.Generator, rank: int | None = None):
    a = rng.standard_normal((d, rank or d))
    return rng.standard_normal(d), a @ a.T / (rank or d)


def scipy_fid(mu1, s1, mu2, s2) -> float:
    """The textbook computation: scipy.linalg.sqrtm of the product, real part."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(np.real(covmean)))


# --- the Frechet distance --------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 5, 64, 256])
def test_frechet_distance_matches_scipy(d: int):
    rng = np.random.default_rng(d)
    mu1, s1 = random_gaussian(d, rng)
    mu2, s2 = random_gaussian(d, rng)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_fid(mu1, s1, mu2, s2),
                                                               rel=1e-7, abs=1e-9)
    theirs = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        theirs["frechet_inception_distance"], rel=1e-6, abs=1e-8)  # torch-fidelity agrees


@pytest.mark.parametrize("d, rank", [(32, 8), (64, 63), (20, 1)])
def test_frechet_distance_near_singular_covariances(d: int, rank: int):
    """Covariances of fewer samples than dimensions (rank-deficient, as with small N): the
    eigenvalue route stays real and agrees with scipy (plus a tiny offset, the usual fix)."""
    rng = np.random.default_rng(rank)
    mu1, s1 = random_gaussian(d, rng, rank)
    mu2, s2 = random_gaussian(d, rng, rank)
    ours = frechet_distance(mu1, s1, mu2, s2)
    offset = np.eye(d) * 1e-10
    ref = scipy_fid(mu1, s1 + offset, mu2, s2 + offset)
    assert np.isfinite(ours) and ours == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_frechet_distance_identities():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 64)) * rng.uniform(0.1, 3, 64) + 5
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6  # FID(x, x) = 0
    mu2, s2 = random_gaussian(64, rng)
    d = frechet_distance(mu, sigma, mu2, s2)
    assert d == pytest.approx(frechet_distance(mu2, s2, mu, sigma), rel=1e-9)  # symmetric
    shift = rng.standard_normal(64) * 10
    assert frechet_distance(mu + shift, sigma, mu2 + shift, s2) == pytest.approx(d, rel=1e-9)
    # a pure translation of one side adds ||shift||^2
    assert frechet_distance(mu + shift, sigma, mu, sigma) == pytest.approx(shift @ shift, rel=1e-9)


def test_frechet_distance_diagonal_closed_form():
    """Diagonal Gaussians: d^2 = ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.01, 4, 16), rng.uniform(0.01, 4, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_stats_equal_numpy_over_all_features():
    """Uneven batches (one of a single row), float32 input far from 0: float64 accumulation
    gives numpy's mean and covariance of all rows at once."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((1001, 12)) * rng.uniform(0.5, 2, 12) + 1000).astype(np.float32)
    stats = StreamingStats()
    for lo, hi in [(0, 1), (1, 300), (300, 301), (301, 777), (777, 1001)]:
        stats.update(torch.from_numpy(x[lo:hi]))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(stats.mean, x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-9)
    assert stats.n == 1001 and stats.cov.dtype == np.float64
    with pytest.raises(ValueError, match="at least 2"):
        one = StreamingStats()
        one.update(x[:1])
        _ = one.cov


# --- extractors, features, metrics -----------------------------------------------------------


def synthetic_images(n: int, seed: int, brightness: float = 0.0, size: int = 16) -> torch.Tensor:
    """Smooth random blobs, uint8 (n, 3, size, size); ``brightness`` shifts the distribution."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")
    return (x * 40 + 128 + brightness).clamp(0, 255).round().to(torch.uint8)


def standin() -> Extractor:
    return open_extractor(STANDIN, ["fid", "isc", "kid", "prc"])


def features_of(images: torch.Tensor, ext: Extractor, keep=()):
    source = TensorImages(images, "test images")
    return extract_features(source.batches(64), len(source), ext, torch.device("cpu"), keep,
                            show=False)


def test_standin_extractor_is_deterministic_and_in_eval_mode():
    a, b = standin(), standin()
    assert not a.module.training and not any(p.requires_grad for p in a.module.parameters())
    x = synthetic_images(5, 0)
    fa, la = a.module(x)
    fb, lb = b.module(x)
    assert fa.shape == (5, 64) and la.shape == (5, 10)
    assert torch.equal(fa, fb) and torch.equal(la, lb)
    assert not a.comparable and a.layers == {"fid": "feat", "isc": "logits", "kid": "feat",
                                             "prc": "feat"}


def test_fid_same_distribution_is_far_below_shifted_distribution():
    ext = standin()
    ref = features_of(synthetic_images(300, 0), ext).stats
    same = features_of(synthetic_images(300, 1), ext).stats
    shifted = features_of(synthetic_images(300, 2, brightness=40), ext).stats
    d_same = frechet_distance(same.mu, same.sigma, ref.mu, ref.sigma)
    d_shift = frechet_distance(shifted.mu, shifted.sigma, ref.mu, ref.sigma)
    assert 0 <= d_same < 0.1 * d_shift


def test_grayscale_is_repeated_to_rgb_before_the_extractor():
    ext = standin()
    gray = synthetic_images(8, 3)[:, :1]
    a = features_of(gray, ext).stats
    b = features_of(gray.expand(-1, 3, -1, -1).contiguous(), ext).stats
    np.testing.assert_array_equal(a.mu, b.mu)


def test_all_metrics_with_torch_fidelity():
    ext = standin()
    keep = {"feat", "logits"}
    fake = features_of(synthetic_images(40, 1), ext, keep)
    real = features_of(synthetic_images(50, 0), ext, keep)
    ref = RefStats(real.stats, real.kept["feat"])
    out = compute_metrics(["fid", "isc", "kid", "prc"], fake, ref, ext.layers)
    assert set(out) == {"fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "precision",
                        "recall", "f_score"}
    assert out["isc_mean"] >= 1 and 0 <= out["precision"] <= 1 and out["fid"] >= 0


def test_parse_metrics():
    assert parse_metrics(None) == ["fid"]
    assert parse_metrics(["fid", "KID", "fid"]) == ["fid", "kid"]
    assert parse_metrics("fid,prc") == ["fid", "prc"]
    with pytest.raises(DiffcliError, match="unknown metric fdi"):
        parse_metrics(["fdi"])


def test_samples_folder_of_diffcli_sample_uses_its_npz(tmp_path: Path):
    """A `diffcli sample` folder holds samples.npz, images/ and grid.png: the .npz is used."""
    images = synthetic_images(5, 0, size=8).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "samples.npz", images=images, seeds=np.arange(5))
    write_pngs(tmp_path / "images", 5, 0)
    Image.new("RGB", (40, 40)).save(tmp_path / "grid.png")
    source = open_samples(tmp_path)
    assert len(source) == 5 and source.size == (8, 8)
    batch = next(source.batches(8))
    assert batch.shape == (5, 3, 8, 8) and batch.dtype == torch.uint8
    assert len(open_samples(tmp_path / "images", n=3)) == 3


# --- the reference-statistics cache ---------------------------------------------------------


def test_cache_second_call_reads_no_images(tmp_path: Path, monkeypatch):
    ext = open_extractor(STANDIN)
    digits = DatasetRef("digits", None, "train", 8)
    out = Console(file=None, record=True, width=300)
    first = DatasetReferenceStats(digits, tmp_path, console=out)(ext, torch.device("cpu"))
    assert not first.cached and first.stats.n == 1797 and first.path.is_file()
    assert "computed reference statistics" in out.export_text()

    def no_images(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr("diffcli.data.registry.build_dataset", no_images)
    second = DatasetReferenceStats(digits, tmp_path, console=out)(ext, torch.device("cpu"))
    assert second.cached and second.path == first.path
    assert f"using cached reference statistics: {first.path}" in out.export_text()
    np.testing.assert_array_equal(second.stats.sigma, first.stats.sigma)
    assert second.stats.sigma.dtype == np.float64


def test_cache_key_changes_with_resolution_split_and_extractor(tmp_path: Path):
    std = open_extractor(STANDIN)
    fake_inception = Extractor(INCEPTION, std.module, {"fid": "2048"}, INCEPTION_WEIGHTS_FILE,
                               True)

    def path(ref: DatasetRef, ext: Extractor = std) -> Path:
        return cache_path(tmp_path, reference_key({"kind": "dataset", **ref.cache_key()}, ext,
                                                  None))

    base = DatasetRef("cifar10", "data", "train", 32)
    variants = [path(base), path(DatasetRef("cifar10", "data", "train", 16)),
                path(DatasetRef("cifar10", "data", "test", 32)), path(base, fake_inception),
                path(DatasetRef("celeba", "data", "train", 32))]
    assert len(set(variants)) == len(variants)
    assert path(base) == path(DatasetRef("cifar10", "data", "train", 32))  # stable
    assert "cifar10-train-32x32-standin" in path(base).name


def test_cache_stores_features_only_when_needed(tmp_path: Path):
    ext = open_extractor(STANDIN)
    calls = []

    def opener():
        calls.append(1)
        return TensorImages(synthetic_images(30, 0), "30 test images")

    key = reference_key({"kind": "test", "resolution": [16, 16]}, ext, None)
    quiet = Console(file=None, quiet=True)
    cpu = torch.device("cpu")
    a = reference_statistics(opener, key, ext, cpu, 8, tmp_path, False, quiet)
    assert a.features is None and len(calls) == 1
    b = reference_statistics(opener, key, ext, cpu, 8, tmp_path, True, quiet)  # KID: recompute
    assert b.features is not None and b.features.shape == (30, 64) and len(calls) == 2
    c = reference_statistics(opener, key, ext, cpu, 8, tmp_path, True, quiet)
    assert c.cached and len(calls) == 2 and torch.equal(c.features, b.features)
    assert fid_cache.default_cache_dir().parts[-2:] == ("diffcli", "fid")


# --- Inception weights: offline behaviour ---------------------------------------------------


def test_missing_inception_weights_is_one_line_naming_both_places(_offline_caches: Path):
    with pytest.raises(WeightsNotFoundError) as info:
        open_extractor(INCEPTION)
    message = str(info.value)
    hub = _offline_caches / "torch" / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    assert "\n" not in message and str(hub) in message
    assert all(f in message for f in WEIGHTS_MSG)
    with pytest.raises(WeightsNotFoundError, match="fid_weights=<path to"):
        open_extractor(INCEPTION, key="fid_weights")
    with pytest.raises(WeightsNotFoundError, match="weights=/nope.pth: no such file"):
        open_extractor(INCEPTION, weights="/nope.pth")


def test_inception_path_with_weights_in_the_hub_cache(_offline_caches: Path, monkeypatch):
    """Random weights stand in for the real file (not available offline) to exercise the
    Inception route: found in $TORCH_HOME/hub/checkpoints, eval mode, (B, 2048) features."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with monkeypatch.context() as m:
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        state = tfi.FeatureExtractorInceptionV3(INCEPTION, ["2048"]).state_dict()
    hub = _offline_caches / "torch" / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    hub.parent.mkdir(parents=True)
    torch.save(state, hub)
    ext = open_extractor(INCEPTION, ["fid", "isc"])
    assert not ext.module.training and ext.weights == INCEPTION_WEIGHTS_FILE and ext.comparable
    assert ext.layers == {"fid": "2048", "isc": "logits_unbiased"}
    out = features_of(synthetic_images(3, 0, size=8), ext, keep={"logits_unbiased"})
    assert out.stats.mu.shape == (2048,) and out.kept["logits_unbiased"].shape == (3, 1008)
    bad = hub.with_name("not-weights.pth")
    bad.write_bytes(b"garbage")
    with pytest.raises(DiffcliError, match="not a readable Inception-v3 weights file"):
        open_extractor(INCEPTION, weights=bad)


def test_download_failure_is_one_line(_offline_caches: Path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(WeightsNotFoundError) as info:
        open_extractor(INCEPTION, download=True)
    message = str(info.value)
    assert message.startswith("could not download") and "unreachable" in message
    assert "\n" not in message and all(f in message for f in WEIGHTS_MSG)
    assert not list((_offline_caches / "torch").rglob("*.part"))


def test_train_with_fid_every_fails_early_without_weights(tmp_path: Path):
    from diffcli.workflows.training import _callbacks

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["callbacks.fid_proxy.every_n_steps=5",
                                          "callbacks.preview=null", "logger=none"])
    proxy = cfg.callbacks.fid_proxy
    assert proxy.num_samples == 2000 and proxy.extractor == INCEPTION
    assert proxy.sampler.steps == 50 and proxy.sampler.clip_denoised
    with pytest.raises(WeightsNotFoundError, match="fid_weights=<path to"):
        _callbacks(cfg, tmp_path)


# --- the training callback ------------------------------------------------------------------


def test_fid_proxy_logs_during_training(tmp_path: Path):
    net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), groups=4)
    module = DiffusionModule(net, linear_schedule(100), ema_decay=0.9)
    data = TensorDataModule(torch.rand(32, 1, 8, 8) * 2 - 1, batch_size=8)
    ext = open_extractor(STANDIN)
    ref = features_of(synthetic_images(40, 0, size=8), ext).stats
    seen = []

    def reference(extractor: Extractor, device: torch.device) -> RefStats:
        seen.append(device)
        return RefStats(GaussianStats(ref.mu, ref.sigma, ref.n))

    proxy = FIDProxy(2, 8, DDIM(steps=2, clip_denoised=True), reference, ext, batch_size=4,
                     console=Console(file=None, quiet=True))
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, callbacks=[proxy],
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert [s for s, _ in proxy.history] == [2, 4] and len(seen) == 2
    assert all(np.isfinite(v) and v > 0 for _, v in proxy.history)
    assert float(trainer.callback_metrics["val/fid_proxy"]) == pytest.approx(proxy.history[-1][1])
    with pytest.raises(DiffcliError, match="image"):
        FIDProxy.from_settings(2, 8, DDIM(steps=2), {"name": "swiss_roll"}, STANDIN)


# --- eval-fid as a workflow (bad input, in-process) ------------------------------------------


def eval_cfg(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("eval_fid", overrides=list(overrides))


def write_pngs(folder: Path, n: int, seed: int, brightness: float = 0.0, size: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(synthetic_images(n, seed, brightness, size)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    return folder


@pytest.mark.parametrize("make, overrides, fragment", [
    (None, ["metrics=[fid,fdi]"], "unknown metric fdi"),
    (None, ["n=1"], "n=1: FID needs at least 2"),
    ("empty", ["samples={d}/empty", "ref={d}/ref"], "no images found"),
    (None, ["samples={d}/missing", "ref={d}/ref"], "no such folder"),
    (None, ["samples={d}/ref"], "needs ref="),
    ("nonsquare", ["samples={d}/wide", "ref={d}/ref"], "not square"),
    ("npz16", ["samples={d}/ref", "ref={d}/ref16.npz"], "16x16 images but the samples are 8x8"),
    (None, ["samples={d}/ref", "ref={d}/ref", "n=500"], "fewer than n=500"),
    (None, ["runs_root={d}/none"], "no trained run"),
])
def test_eval_fid_bad_input_is_one_line(tmp_path: Path, monkeypatch, make, overrides, fragment):
    from diffcli.workflows.fid_eval import eval_fid

    monkeypatch.chdir(tmp_path)
    write_pngs(tmp_path / "ref", 6, 0)
    if make == "empty":
        (tmp_path / "empty").mkdir()
    elif make == "nonsquare":
        (tmp_path / "wide").mkdir()
        for i in range(3):
            Image.new("RGB", (12, 8)).save(tmp_path / "wide" / f"{i}.png")
    elif make == "npz16":
        images = synthetic_images(4, 0, size=16).permute(0, 2, 3, 1).numpy()
        np.savez(tmp_path / "ref16.npz", images=images)
    cfg = eval_cfg("extractor=standin", *(o.format(d=tmp_path) for o in overrides))
    with pytest.raises(DiffcliError) as info:
        eval_fid(cfg)
    assert fragment in str(info.value) and "\n" not in str(info.value)


# --- the command line (real processes) ------------------------------------------------------


@pytest.mark.slow
def test_eval_fid_on_two_image_folders(tmp_path: Path):
    fake = write_pngs(tmp_path / "fake", 40, 1)
    real = write_pngs(tmp_path / "real", 50, 0)
    args = ["eval-fid", f"samples={fake}", f"ref={real}", "extractor=standin", "n=40",
            "metrics=[fid,kid]"]
    first = run(tmp_path, *args)
    assert "computed reference statistics" in first.stderr and "NOT comparable" in first.stderr
    record = json.loads((fake / "fid-n40-standin.json").read_text())
    assert record["n"] == 40 and record["reference"]["n"] == 50
    assert record["extractor"]["name"] == "standin" and not record["extractor"]["comparable"]
    assert set(record["versions"]) >= {"torch", "torchvision", "torch-fidelity", "diffcli"}
    assert record["summary"]["fid"]["min"] >= 0 and "kid_mean" in record["summary"]
    assert "fid" in first.stdout  # the table
    second = run(tmp_path, *args)
    assert "using cached reference statistics" in second.stderr
    assert json.loads((fake / "fid-n40-standin_2.json").read_text())["reference"]["cached"]
    assert json.loads((fake / "fid-n40-standin.json").read_text()) == record  # kept
    assert not (tmp_path / "outputs").exists()  # nothing else written (no Hydra run dir)


@pytest.mark.slow
def test_eval_fid_missing_weights_and_bad_input_are_one_line(tmp_path: Path):
    write_pngs(tmp_path / "a", 4, 0)
    proc = run(tmp_path, "eval-fid", f"samples={tmp_path / 'a'}", f"ref={tmp_path / 'a'}",
               ok=False)
    assert_one_line_error(proc, "Inception-v3 weights", *WEIGHTS_MSG)
    (tmp_path / "empty").mkdir()
    proc = run(tmp_path, "eval-fid", f"samples={tmp_path / 'empty'}", f"ref={tmp_path / 'a'}",
               "extractor=standin", ok=False)
    assert_one_line_error(proc, "no images found")


@pytest.mark.slow
def test_eval_fid_on_a_tiny_trained_run(tmp_path: Path):
    run(tmp_path, "train", *TINY_UNET, "trainer.max_steps=3", "logger=none",
        "callbacks.preview=null")
    run_dir = next(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")).parent.parent
    proc = run(tmp_path, "eval-fid", "extractor=standin", "n=64", "steps=5", "repeats=2")
    assert "last.ckpt" in proc.stderr and "computed reference statistics" in proc.stderr
    out = run_dir / "eval" / "fid-auto-5-n64-standin.json"  # the default sampler
    record = json.loads(out.read_text())
    assert [r["seeds"] for r in record["results"]] == ["0-63", "64-127"]
    gen = record["generated"]
    assert gen["sampler"] == "auto" and gen["steps"] == 5 and gen["weights"] == "ema_net"
    assert gen["sampler_notes"][0].startswith("auto -> ")  # what auto picked
    assert gen["sampler_notes"][0] in proc.stderr
    assert gen["checkpoint"].endswith("last.ckpt") and record["reference"]["n"] == 1797
    fids = [r["fid"] for r in record["results"]]
    assert record["summary"]["fid"]["min"] == min(fids)
    assert record["summary"]["fid"]["mean"] == pytest.approx(sum(fids) / 2)
    assert list(tmp_path.glob("outputs/*/*")) == [run_dir]  # no new run dir, no checkpoints/
