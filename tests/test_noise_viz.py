"""`diffcli noise-viz`: the viz functions on tensors (fast), then the command line (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from test_cli import assert_one_line_error
from test_cli import run_here as run

from diffcli.cli import CONF_DIR
from diffcli.diffusion.objectives import EDM, Flow
from diffcli.diffusion.objectives.levels import (
    log_sigma_cdf,
    log_sigma_density,
    schedule_log_sigma_density,
    sigma_quantile,
)
from diffcli.diffusion.schedules import cosine_schedule, linear_schedule, make_schedule
from diffcli.errors import DiffcliError
from diffcli.viz import (
    LevelCurve,
    evenly_spaced,
    forward_frames,
    forward_grid,
    plot_forward_grid,
    plot_noise_levels,
    plot_reverse,
    plot_schedules,
    reverse_frames,
    save_gif,
    sigma_grid,
    to_display,
)
from diffcli.viz.noise_levels import log_sigma_span
from diffcli.viz.plots import wrap_title
from diffcli.workflows.noise_pictures import (
    build_schedules,
    check_timesteps,
    load_images,
    prepare_reverse,
)
from diffcli.workflows.objective_pictures import check_sigmas, forward_columns

SCHEDULES = [linear_schedule(), cosine_schedule()]


def _images(n: int = 2, c: int = 1, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, c, size, size, generator=g) * 2 - 1
    return x0, torch.randn(x0.shape, generator=g)


# --- the forward grid ------------------------------------------------------------------------


def test_grid_shape_and_t0_is_the_input():
    x0, eps = _images(n=3)
    grid = forward_grid(x0, SCHEDULES, [0, 250, 999], eps)
    assert grid.shape == (2, 3, 3, 1, 16, 16)
    for s, sched in enumerate(SCHEDULES):
        abar0 = sched.alphas_cumprod[0].item()  # linear 0.9999, cosine ~0.99996
        # x_0 differs from the input by at most sqrt(1 - abar_0) |eps| + (1 - sqrt(abar_0))
        bound = (1 - abar0) ** 0.5 * eps.abs().max().item() + (1 - abar0 ** 0.5) + 1e-6
        assert (grid[s, :, 0] - x0).abs().max().item() <= bound < 0.05
        expected = abar0 ** 0.5 * x0 + (1 - abar0) ** 0.5 * eps  # Ho et al. 2020, eq. 4
        torch.testing.assert_close(grid[s, :, 0], expected)


def test_last_timestep_is_unit_variance_noise_for_linear():
    x0 = torch.full((8, 3, 32, 32), 0.7)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    x_last = forward_grid(x0, [linear_schedule()], [999], eps)[0, :, 0]
    assert x_last.std().item() == pytest.approx(1.0, abs=0.03)
    assert x_last.mean().item() == pytest.approx(0.0, abs=0.03)
    assert np.corrcoef(x_last.flatten(), eps.flatten())[0, 1] > 0.9999


def test_every_schedule_and_timestep_uses_the_same_eps():
    x0, eps = _images(n=2)
    ts = [10, 300, 700, 999]
    grid = forward_grid(x0, SCHEDULES, ts, eps)
    for s, sched in enumerate(SCHEDULES):
        abar = sched.alphas_cumprod[ts].float().reshape(1, -1, 1, 1, 1)
        recovered = (grid[s] - abar.sqrt() * x0[:, None]) / (1 - abar).sqrt()  # (N, K, C, H, W)
        torch.testing.assert_close(recovered, eps[:, None].expand_as(recovered), atol=1e-4,
                                   rtol=1e-4)


def test_grid_rejects_noise_of_another_shape():
    x0, eps = _images()
    with pytest.raises(ValueError, match="shape"):
        forward_grid(x0, SCHEDULES, [0], eps[:1])


def test_evenly_spaced_includes_both_ends():
    assert evenly_spaced(5, 1000) == [0, 250, 500, 749, 999]
    assert evenly_spaced(8, 3) == [0, 1, 2]
    assert evenly_spaced(1, 10) == [0]


def test_to_display_clips_to_unit_range():
    gray = to_display(torch.tensor([[[-3.0, 0.0], [1.0, 5.0]]]))
    assert gray.shape == (2, 2) and gray.min() == 0 and gray.max() == 1 and gray[0, 1] == 0.5
    assert to_display(torch.zeros(3, 4, 5)).shape == (4, 5, 3)


# --- the objectives' noise levels (EDM, flow) beside the DDPM chain ---------------------------

LAWS = {"edm": EDM(), "flow": Flow(), "flow-shift3": Flow(shift=3.0),
        "gvp-uniform": Flow(interpolant="gvp", t_sampling="uniform"),
        "vp": Flow(interpolant="vp", logit_mean=0.5, logit_std=0.8)}


@pytest.mark.parametrize("name", LAWS)
def test_training_laws_integrate_to_one_and_quantiles_invert_the_cdf(name):
    objective = LAWS[name]
    x = torch.linspace(-25, 25, 20001, dtype=torch.float64)
    assert torch.trapezoid(log_sigma_density(objective, x), x).item() == pytest.approx(1, abs=1e-6)
    q = torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99], dtype=torch.float64)
    torch.testing.assert_close(log_sigma_cdf(objective, sigma_quantile(objective, q).log()), q)


def test_training_laws_where_the_closed_forms_put_them():
    from math import exp, log, pi, sqrt

    half, one_std = torch.tensor([0.5]), torch.special.ndtr(torch.tensor([1.0]))
    # EDM: ln sigma ~ N(-1.2, 1.2^2) (Karras et al. 2022, Table 1)
    assert sigma_quantile(EDM(), half).item() == pytest.approx(exp(-1.2))
    assert sigma_quantile(EDM(), one_std).item() == pytest.approx(1.0)
    # linear flow, logit-normal t, shift 3: ln sigma = ln 3 + logit t ~ N(ln 3, 1)
    flow3 = Flow(shift=3.0)
    assert sigma_quantile(flow3, half).item() == pytest.approx(3.0)
    assert log_sigma_density(flow3, torch.tensor([log(3)])).item() == pytest.approx(
        1 / sqrt(2 * pi))
    # uniform t on the linear path: t = sigmoid(ln sigma), so p(ln sigma) = t (1 - t)
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    t = torch.sigmoid(x)
    torch.testing.assert_close(log_sigma_density(Flow(t_sampling="uniform"), x), t * (1 - t))
    # the DDPM chain: T cells of mass 1/T, timestep k's around its ln sigma_k
    schedule = linear_schedule()
    edges, density = schedule_log_sigma_density(schedule)
    assert (density * edges.diff()).sum().item() == pytest.approx(1.0)
    assert bool(((edges[:-1] < schedule.log_sigmas) & (schedule.log_sigmas < edges[1:])).all())


def test_sigma_grid_is_the_ddpm_forward_process_at_the_same_sigma():
    x0, eps = _images(n=2)
    schedule, ts = linear_schedule(), [0, 300, 999]
    by_sigma = sigma_grid(x0, [float(schedule.sigmas[t]) for t in ts], eps)
    torch.testing.assert_close(by_sigma, forward_grid(x0, [schedule], ts, eps), atol=1e-5,
                               rtol=1e-5)
    assert torch.equal(sigma_grid(x0, [0.0], eps)[0, :, 0], x0)


def test_an_objectives_columns_and_sigmas():
    columns = forward_columns(EDM(), None)  # 0, the 10..90% quantiles, sigma_max
    assert len(columns) == 7 and columns[0] == 0 and columns[-1] == pytest.approx(80)
    assert columns[3] == pytest.approx(np.exp(-1.2))  # the median
    assert forward_columns(EDM(), [0.0, 2.0]) == [0.0, 2.0]
    assert check_sigmas(OmegaConf.create({"s": [0, 1.5]}).s) == [0.0, 1.5]
    for bad in ([], [-1], ["x"], [True]):
        with pytest.raises(DiffcliError, match="sigmas"):
            check_sigmas(bad)


def test_noise_levels_png_widens_to_every_step_and_titles_wrap(tmp_path: Path):
    assert log_sigma_span([[np.exp(9.9), 0.0], [1.0]]) == pytest.approx((-7.5, 10.4))
    x = torch.linspace(-7.5, 7.5, 11, dtype=torch.float64)
    edges, density = schedule_log_sigma_density(cosine_schedule(50))
    curves = [LevelCurve("cosine", "cosine", edges, density, [10.0, 1.0, 0.0], stairs=True),
              LevelCurve("EDM", "EDM", x, log_sigma_density(EDM(), x), [80.0, 0.1, 0.0])]
    w, h = _png_size(plot_noise_levels(curves, tmp_path / "n.png", sampler="ddim (2 steps)"))
    assert w > h > 400
    wrapped = wrap_title("word " * 60 + r"$x = \sigma \epsilon$ end", 3.0)
    assert r"$x = \sigma \epsilon$" in wrapped and wrapped.count("\n") >= 5
    room = 3.0 * 72 / (0.55 * 11)  # characters of 11 points in 3 inches
    assert all(len(line) <= room for line in wrapped.splitlines() if "$" not in line)


# --- the pictures ----------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_forward_png_grows_with_rows_and_columns(tmp_path: Path):
    x0, eps = _images(n=2)
    three = [*SCHEDULES, make_schedule("sigmoid")]
    sizes = {}
    cases = {"base": (SCHEDULES, 1, [0, 500, 999]), "more_rows": (three, 1, [0, 500, 999]),
             "two_images": (SCHEDULES, 2, [0, 500, 999]),
             "more_cols": (SCHEDULES, 1, [0, 100, 250, 500, 750, 999])}
    for name, (scheds, n, ts) in cases.items():
        grid = forward_grid(x0[:n], scheds, ts, eps[:n])
        abar = torch.stack([s.alphas_cumprod[ts] for s in scheds])
        path = plot_forward_grid(grid, [s.name for s in scheds], ts, abar, tmp_path / f"{name}.png")
        sizes[name] = _png_size(path)
    (w, h) = sizes["base"]
    assert w >= 3 * 100 and h >= 2 * 100  # cells of at least ~100 pixels
    assert sizes["more_rows"][0] == w and sizes["more_rows"][1] > h * 1.3
    assert sizes["two_images"][0] == w and sizes["two_images"][1] > h * 1.8
    assert sizes["more_cols"][1] == h and sizes["more_cols"][0] > w * 1.7
    with pytest.raises(ValueError, match="names"):
        plot_forward_grid(grid, ["one"], [0], abar, tmp_path / "bad.png")


def test_schedules_and_reverse_pngs(tmp_path: Path):
    w, h = _png_size(plot_schedules([linear_schedule(1000), cosine_schedule(50)],
                                    tmp_path / "s.png", marks=[0.5]))
    assert w > 2.5 * h  # three panels side by side
    x_t, x0 = torch.rand(2, 5, 3, 3, 8, 8).unbind(0)  # (K=5, N=3, C=3, 8, 8) each
    w, h = _png_size(plot_reverse([999, 700, 500, 200, 0], x_t, x0, tmp_path / "r.png",
                                  title="t", total_steps=50, steps=[0, 10, 20, 30, 49]))
    assert w > 5 * 100 and h > 6 * 100  # 5 columns, 2 rows per sample
    w2, h2 = _png_size(plot_reverse([999, 700, 500, 200, 0], x_t, x0, tmp_path / "r2.png",
                                    title="t", final=x0[-1]))
    assert h2 == h and w2 > w + 100  # one more column: the output
    with pytest.raises(ValueError, match="do not match"):
        plot_reverse([999], x_t, x0, tmp_path / "bad.png")


def test_gifs_have_one_frame_per_step(tmp_path: Path):
    x0, eps = _images(n=2, size=8)
    frames = forward_frames(x0, SCHEDULES, ["linear", "cosine"], evenly_spaced(6, 1000), eps)
    assert len(frames) == 6 and frames[0].width > 2 * 112  # schedules side by side, scaled up
    with Image.open(save_gif(frames, tmp_path / "f.gif")) as gif:
        assert gif.n_frames == 6
    x_t = torch.randn(4, 2, 1, 8, 8)
    frames = reverse_frames([999, 500, 250.5, 0], x_t, x_t.clamp(-1, 1))
    assert len(frames) == 4 and frames[0].size == frames[-1].size
    mixed = [Image.new("RGB", (10, 30)), Image.new("RGB", (40, 20))]  # captions of any length
    with Image.open(save_gif(mixed, tmp_path / "m.gif")) as gif:
        assert gif.size == (40, 30) and gif.n_frames == 2


# --- the workflow's checks -------------------------------------------------------------------


def test_schedules_by_conf_name_and_bad_names():
    scheds = build_schedules(["linear", "cosine"], 200, CONF_DIR)
    assert [s.name for s in scheds] == ["linear", "cosine"]
    assert all(s.num_timesteps == 200 for s in scheds)
    with pytest.raises(DiffcliError, match=r"unknown schedule 'cosin'.*cosine, linear, sigmoid"):
        build_schedules(["linear", "cosin"], 1000, CONF_DIR)


def test_timesteps_default_and_range():
    assert check_timesteps(None, 1000) == [0, 100, 250, 500, 750, 999]
    assert check_timesteps(None, 10) == [0, 1, 2, 5, 8, 9]
    assert check_timesteps([5, 0], 10) == [5, 0]
    for bad in ([0, 1000], [-1], [2.5]):
        with pytest.raises(DiffcliError, match=r"\[0, 999\]"):
            check_timesteps(bad, 1000)


def _cfg(**kw: object):
    base = {"image": None, "image_size": 16, "num_images": 2, "indices": None,
            "dataset": {"name": "digits", "image_size": 16}}
    return OmegaConf.create(base | kw)


def test_images_from_files_dataset_and_bad_input(tmp_path: Path):
    rgb = tmp_path / "photo.jpg"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(rgb)
    x = load_images(_cfg(image=str(rgb)))
    assert x.shape == (1, 3, 16, 16)
    torch.testing.assert_close(x[0, 0], torch.ones(16, 16), atol=0.02, rtol=0)  # red
    gray = tmp_path / "gray.png"
    Image.new("L", (20, 20), 0).save(gray)
    assert load_images(_cfg(image=str(gray))).shape == (1, 1, 16, 16)
    both = load_images(_cfg(image=[str(gray), str(rgb)]))  # mixed: all as RGB
    assert both.shape == (2, 3, 16, 16) and both[0].max().item() == -1
    assert load_images(_cfg()).shape == (2, 1, 16, 16)
    assert load_images(_cfg(indices=[5])).shape == (1, 1, 16, 16)
    with pytest.raises(DiffcliError, match="image file not found"):
        load_images(_cfg(image=str(tmp_path / "missing.png")))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(DiffcliError, match="cannot read image"):
        load_images(_cfg(image=str(junk)))
    with pytest.raises(DiffcliError, match="noise-viz draws images.*dataset=digits"):
        load_images(_cfg(dataset={"name": "swiss_roll"}))


def test_reverse_without_a_trained_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    cfg = OmegaConf.create({"ckpt": None, "reverse": True, "runs_root": "outputs"})
    with pytest.raises(DiffcliError, match="no trained run"):
        prepare_reverse(cfg)
    assert prepare_reverse(OmegaConf.create({"ckpt": None, "reverse": False})) is None


# --- the command line (real processes) -------------------------------------------------------

@pytest.mark.slow
def test_cli_writes_forward_schedules_and_gif_to_its_run_dir(tmp_path: Path):
    proc = run(tmp_path, "noise-viz", "schedules=[linear,cosine]", "timesteps=[0,500,999]",
               "image_size=16", "gif=true", "gif_frames=5")
    (out,) = tmp_path.glob("outputs/noise-viz/*")
    assert {p.name for p in out.iterdir()} == {"forward.png", "schedules.png", "forward.gif",
                                                "noise-levels.png"}
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"wrote forward.png, schedules.png, forward.gif, noise-levels.png to {out}/")
    with Image.open(out / "forward.gif") as gif:
        assert gif.n_frames == 5
    assert not list(tmp_path.rglob("checkpoints"))  # `diffcli sample` never mistakes it for a run


@pytest.mark.slow
def test_cli_reverse_from_the_newest_trained_run(tmp_path: Path):
    """A flow run (DDPM runs: test_conditional_cli, test_latent_cli): its forward process at its
    own noise levels, and the reverse process."""
    run(tmp_path, "train", "dataset.image_size=8", "model.base_channels=8", "model.groups=4",
        "trainer.max_steps=3", "logger=none", "callbacks.preview=null", "objective=flow")
    (ckpt,) = tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")
    proc = run(tmp_path, "noise-viz", "reverse=true", "steps=4", "num_images=1", "gif=true",
               "gif_frames=3")
    assert "objective=flow at its own noise levels" in proc.stderr
    viz = ckpt.parent.parent / "viz"
    assert {p.name for p in viz.iterdir()} == {"forward.png", "schedules.png", "forward.gif",
                                                "noise-levels.png", "reverse.png", "reverse.gif"}
    with Image.open(viz / "reverse.gif") as gif:
        assert gif.n_frames == 4  # one per DDIM step
    assert not (tmp_path / "outputs" / "noise-viz").exists()  # nothing left in a run dir


@pytest.mark.slow
def test_cli_draws_an_objective_without_a_run(tmp_path: Path):
    proc = run(tmp_path, "noise-viz", "objective=flow", "objective.shift=3", "sigmas=[0,1,3]",
               "image_size=8", "num_images=1", "gif=true", "gif_frames=3", "steps=4")
    (out,) = tmp_path.glob("outputs/noise-viz/*")
    assert {p.name for p in out.iterdir()} == {"forward.png", "schedules.png", "forward.gif",
                                                "noise-levels.png"}
    assert "objective=flow at its own noise levels" in proc.stderr
    with Image.open(out / "forward.gif") as gif:
        assert gif.n_frames == 3  # points of flow's sampling lattice
    w3, _ = _png_size(out / "forward.png")
    assert 3 * 100 < w3 < 6 * 100  # the three columns of sigmas=


@pytest.mark.slow
@pytest.mark.parametrize("override, fragments", [
    ("schedules=[linear,quadratic]", ("unknown schedule 'quadratic'", "cosine, linear, sigmoid")),
    ("timesteps=[0,1000]", ("timestep 1000 is out of range", "[0, 999]")),
])
def test_cli_bad_input_is_one_line(tmp_path: Path, override: str, fragments: tuple[str, ...]):
    assert_one_line_error(run(tmp_path, "noise-viz", override, ok=False), *fragments)
    assert not list(tmp_path.glob("outputs/noise-viz/*"))  # no empty run dir left behind
