"""Guidance wrappers of the denoiser against exact closed forms on a labelled Gaussian mixture.

With the exact class-conditional denoiser (:class:`IdealConditionalNetwork`), classifier-free
guidance at w = 0 is the exact unconditional model and at w = 1 the exact conditional one, and
classifier guidance with s = 1 of the exact classifier around the exact unconditional denoiser
is the exact conditional one too (grad log p(x | y) = grad log p(x) + grad log p(y | x)). So
every sampler, driven by these wrappers, must reproduce the mixture or its component k up to
its own discretisation error, judged by the sliced Wasserstein-2 distance against a noise floor.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch

from diffcli.diffusion.denoiser import Denoiser
from diffcli.diffusion.gaussian import (
    GaussianData,
    IdealClassifier,
    IdealConditionalNetwork,
    IdealNetwork,
    two_d_mixture,
)
from diffcli.diffusion.generate import CountingNet, generate
from diffcli.diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance
from diffcli.diffusion.process import Parameterization, alpha_bar, to_x0_eps
from diffcli.diffusion.samplers import (
    DDIM,
    DDPM,
    DPMSolverPP2M,
    DPMSolverPP2MSDE,
    DPMSolverPP3M,
    Euler,
    Heun,
)
from diffcli.diffusion.schedules import linear_schedule
from diffcli.eval.distances import sliced_wasserstein

F64 = torch.float64
KINDS = list(Parameterization)
N = 3000  # samples per point cloud
K = 3  # components = classes; label K is the null label
CLASS = 0  # the guided class: the least likely component (weight 1/6)
DATA = two_d_mixture(radius=1.5, std=0.5, k=K)  # means 2.6 (5.2 std) apart, weights 1:2:3
SCHED = linear_schedule()
# Step counts at which each sampler's own error is below the sampling noise: DDPM's noise and
# Euler/DDIM's first order need many steps; DPM-Solver++(2M) and Heun are second order. Here the
# distances measured 0.6-1.01 floors; over 6 other noise seeds, at most 1.17 floors. With 50
# (DDPM), 25 (DDIM, Euler) or 10 (DPM++, Heun) steps the distance to the class measured 2.1-4.1
# floors, so the bound FACTOR * floor does catch an unconverged (or wrongly guided) sampler.
STEPS = {DDPM: 250, DDIM: 100, DPMSolverPP2M: 50, DPMSolverPP3M: 50, DPMSolverPP2MSDE: 100,
         Euler: 150, Heun: 50}
FACTOR = 1.5  # an exact sampler's distance to the truth, over the floor's mean


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cfg(kind=Parameterization.EPS, labels=None, net=None, **kw) -> ClassifierFreeGuidance:
    net = IdealConditionalNetwork(DATA, SCHED, kind) if net is None else net
    return ClassifierFreeGuidance(net, SCHED, kind, num_classes=K, labels=labels, **kw)


def _unconditional(kind=Parameterization.EPS) -> Denoiser:
    return Denoiser(IdealNetwork(DATA, SCHED, kind), SCHED, kind)


def _labels(n: int, k: int = CLASS) -> torch.Tensor:
    return torch.full((n,), k, dtype=torch.long)


@functools.cache
def _truth_and_floor(which: str) -> tuple[torch.Tensor, float]:
    """N exact draws of the mixture ("mix") or of component CLASS ("class"), and the noise
    floor: the mean SW2 between 8 pairs of independent N-sample draws of it. Over 20 pairs the
    floor had mean 0.048 and max 0.107 for the mixture (the multinomial scatter of the weights
    dominates), mean 0.023 and max 0.033 for the component."""
    draw = DATA.sample if which == "mix" else DATA.component(CLASS).sample
    pairs = [(draw(N, _gen(100 + 2 * i)), draw(N, _gen(101 + 2 * i))) for i in range(8)]
    floor = sum(sliced_wasserstein(a, b) for a, b in pairs) / len(pairs)
    return draw(N, _gen(1)), floor


def _sw_to(which: str, x: torch.Tensor) -> tuple[float, float]:
    truth, floor = _truth_and_floor(which)
    return sliced_wasserstein(x, truth), floor


def _random_states(n: int = 64) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x_t (n, 2) and timesteps: on the training lattice (long) and between it (float64)."""
    x = 2 * torch.randn(n, 2, generator=_gen(7), dtype=F64)
    ts = [torch.randint(0, 1000, (n,), generator=_gen(8)),
          999 * torch.rand(n, generator=_gen(9), dtype=F64)]
    return x, ts


# ---------------------------------------------------------------- closed-form references


@pytest.mark.parametrize("kind", KINDS)
def test_ideal_conditional_network_is_the_mixture_for_null_and_a_component_for_a_label(kind):
    net = IdealConditionalNetwork(DATA, SCHED, kind)
    assert net.num_classes == K
    x, ts = _random_states()
    for t in ts:
        expected = IdealNetwork(DATA, SCHED, kind)(x, t)
        torch.testing.assert_close(net(x, t, _labels(64, K)), expected, rtol=0, atol=0)
        for k in range(K):
            gauss = GaussianData(DATA.means[k], DATA.stds[k])
            torch.testing.assert_close(net(x, t, _labels(64, k)),
                                       IdealNetwork(gauss, SCHED, kind)(x, t),
                                       rtol=1e-12, atol=1e-12)
    mixed = torch.arange(64) % (K + 1)
    rows = [net(x[i:i + 1], ts[0][i:i + 1], mixed[i:i + 1]) for i in range(64)]
    torch.testing.assert_close(net(x, ts[0], mixed), torch.cat(rows), rtol=0, atol=0)
    with pytest.raises(ValueError, match="classes"):
        net(x, ts[0], _labels(64, K + 1))


def test_ideal_classifier_is_bayes_rule_and_its_component_sampler_is_exact():
    """softmax(logits) = pi_k N(x_t; a mu_k, .) / p(x_t), by direct evaluation; the exact
    conditional draws have the component's moments."""
    clf = IdealClassifier(DATA, SCHED)
    x, ts = _random_states()
    for t in ts:
        abar = alpha_bar(SCHED, t, x)
        a, var = abar.sqrt()[:, :, None], abar[:, :, None] * DATA.stds**2 + 1 - abar[:, :, None]
        dens = torch.distributions.Normal(a * DATA.means, var.sqrt()).log_prob(x[:, None]).sum(-1)
        joint = DATA.weights * dens.exp()
        torch.testing.assert_close(clf(x, t).softmax(1), joint / joint.sum(1, keepdim=True),
                                   rtol=1e-9, atol=1e-12)
    assert clf(x.float(), ts[0]).dtype == torch.float32
    draws = DATA.component(1).sample(20_000, _gen(3))
    torch.testing.assert_close(draws.mean(0), DATA.means[1], rtol=0, atol=0.015)
    torch.testing.assert_close(draws.std(0), DATA.stds[1], rtol=0.02, atol=0)
    x0, y = DATA.sample_with_labels(20_000, _gen(4))
    freq = torch.bincount(y, minlength=K).to(F64) / 20_000
    assert (freq - DATA.weights).abs().max() < 0.015, freq
    torch.testing.assert_close(x0[y == 2].mean(0), DATA.means[2], rtol=0, atol=0.02)


@pytest.mark.parametrize("kind", KINDS)
def test_classifier_guidance_of_the_exact_classifier_is_the_exact_conditional(kind):
    """eps - sqrt(1 - abar) grad log p(k | x_t) = eps(x_t | k), pointwise, for every t."""
    labels = torch.arange(64) % K
    cg = ClassifierGuidance.around(_unconditional(kind), IdealClassifier(DATA, SCHED), 1.0,
                                   labels)
    cond = _cfg(kind, labels)
    x, ts = _random_states()
    for t in ts:
        got, want = cg(x, t), cond(x, t)
        torch.testing.assert_close(got.eps, want.eps, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got.x0, want.x0, rtol=1e-7, atol=1e-7)
    half = ClassifierGuidance.around(_unconditional(kind), IdealClassifier(DATA, SCHED), 0.5,
                                     labels)(x, ts[0])
    mean_eps = (_unconditional(kind)(x, ts[0]).eps + cond(x, ts[0]).eps) / 2  # s is linear
    torch.testing.assert_close(half.eps, mean_eps, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------- every sampler, in SW2


@pytest.mark.parametrize("cls", list(STEPS), ids=lambda c: c.__name__)
def test_guided_samplers_reproduce_the_mixture_and_the_class(cls):
    sampler = cls(steps=STEPS[cls])
    noise = torch.randn(N, 2, generator=_gen(3), dtype=F64)
    labels = _labels(N)

    def run(model: Denoiser) -> torch.Tensor:
        return sampler.sample(model, noise, generator=_gen(4))

    cg = ClassifierGuidance.around(_unconditional(), IdealClassifier(DATA, SCHED), 1.0, labels)
    uncond = run(_cfg(labels=labels, scale=0.0))
    sw_mix, floor_mix = _sw_to("mix", uncond)
    sw_class, floor_class = _sw_to("class", run(_cfg(labels=labels, scale=1.0)))
    sw_cg, _ = _sw_to("class", run(cg))
    assert sw_mix < FACTOR * floor_mix, (sw_mix, floor_mix)
    assert sw_class < FACTOR * floor_class, (sw_class, floor_class)
    assert sw_cg < FACTOR * floor_class, (sw_cg, floor_class)
    # the negative check: the unconditional samples are far from the class alone
    assert _sw_to("class", uncond)[0] > 20 * floor_class


def test_guidance_scale_above_one_pushes_samples_into_the_class():
    """w > 1 samples p(x | k)^w p(x)^(1 - w)-like sharpenings: more samples are classified k by
    the exact responsibilities at t = 0, and their mean moves away from the other modes."""
    noise = torch.randn(N, 2, generator=_gen(5), dtype=F64)
    away = DATA.means[CLASS] / DATA.means[CLASS].norm()  # the other two lie on the far side
    abar0 = torch.full((N, 1), float(SCHED.alphas_cumprod[0]), dtype=F64)
    share, push = [], []
    for w in (0.0, 1.0, 2.0, 4.0):
        x = DPMSolverPP2M(steps=25).sample(_cfg(labels=_labels(N), scale=w), noise)
        share.append(float((DATA.responsibilities(x, abar0).argmax(1) == CLASS).to(F64).mean()))
        push.append(float((x @ away).mean()))
    assert share == sorted(share) and share[3] > share[1] > 0.9 > 0.3 > share[0], share
    assert push == sorted(push) and push[3] - push[1] > 0.1, push


# ------------------------------------------------------------- network evaluations (NFE)


class _Spy:
    """A class-conditional net that records each call's batch size and labels."""

    def __init__(self, net):
        self.net, self.seen = net, []

    def __call__(self, x, t, y):
        self.seen.append((x.shape[0], sorted(set(y.tolist()))))
        return self.net(x, t, y)


@pytest.mark.parametrize("cls", [DDIM, Heun], ids=lambda c: c.__name__)
def test_one_forward_per_evaluation_of_2b_when_guided_else_b(cls):
    x = torch.randn(4, 2, generator=_gen(6), dtype=F64)
    sampler = cls(steps=5) if cls is DDIM else cls(steps=5, max_ratio=None)
    nfe = 5 if cls is DDIM else 9  # Heun: 2N - 1 (every step corrected: max_ratio=None)
    labels = torch.tensor([0, 1, 2, 0])
    for scale, rows, used in ((3.0, 8, [0, 1, 2, K]), (0.5, 8, [0, 1, 2, K]),
                              (0.0, 4, [K]), (1.0, 4, [0, 1, 2])):
        spy = _Spy(IdealConditionalNetwork(DATA, SCHED))
        counter = CountingNet(spy)
        sampler.sample(_cfg(labels=labels, scale=scale, net=counter), x)
        assert counter.calls == nfe and counter.rows == rows * nfe, (scale, counter)
        assert all(seen == (rows, used) for seen in spy.seen), (scale, spy.seen)
    counter = CountingNet(IdealConditionalNetwork(DATA, SCHED))
    sampler.sample(_cfg(scale=3.0, net=counter), x)  # no labels: the null label, one forward
    assert (counter.calls, counter.rows) == (nfe, 4 * nfe)


# ------------------------------------------------ parameterizations, interval and rescale


def test_the_combination_is_the_same_for_eps_x0_and_v():
    """Each parameterization is affine in the others at fixed (x_t, t), with the output's
    coefficients summing to one, so combining eps, x0 or v outputs gives one result."""
    x, ts = _random_states()
    labels = torch.arange(64) % K
    for t in ts:
        preds = [_cfg(kind, labels, scale=2.5)(x, t) for kind in KINDS]
        for p in preds[1:]:
            torch.testing.assert_close(p.x0, preds[0].x0, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(p.eps, preds[0].eps, rtol=1e-9, atol=1e-9)
        abar = alpha_bar(SCHED, t, x)
        for kind in KINDS:  # the claim itself: the conversion commutes with eq. 6
            net = IdealConditionalNetwork(DATA, SCHED, kind)
            out_c, out_u = net(x, t, labels), net(x, t, _labels(64, K))
            c, u = (to_x0_eps(o, kind, x, abar) for o in (out_c, out_u))
            combined = to_x0_eps(out_u + 2.5 * (out_c - out_u), kind, x, abar)
            torch.testing.assert_close(combined.x0, u.x0 + 2.5 * (c.x0 - u.x0),
                                       rtol=1e-9, atol=1e-9)
    run = [DDIM(steps=10).sample(_cfg(kind, _labels(256), scale=3.0),
                                 torch.randn(256, 2, generator=_gen(2), dtype=F64))
           for kind in KINDS]
    for r in run[1:]:
        torch.testing.assert_close(r, run[0], rtol=1e-8, atol=1e-8)


def test_rescale_matches_the_conditional_std_of_the_x0_estimate():
    x, ts = _random_states()
    labels = torch.arange(64) % K
    t = ts[0]
    plain = _cfg(labels=labels, scale=4.0)
    cond = _cfg(labels=labels, scale=1.0)(x, t).x0
    assert torch.equal(_cfg(labels=labels, scale=4.0, rescale=0.0)(x, t).x0, plain(x, t).x0)
    full = _cfg(labels=labels, scale=4.0, rescale=1.0)(x, t)
    std = lambda v: v.std(dim=1, correction=0)  # noqa: E731
    torch.testing.assert_close(std(full.x0), std(cond), rtol=1e-9, atol=1e-12)
    assert (std(plain(x, t).x0) - std(cond)).abs().max() > 0.1  # so the rescale did something
    g = plain(x, t).x0
    mix = 0.7 * g * (std(cond) / std(g))[:, None] + 0.3 * g
    part = _cfg(labels=labels, scale=4.0, rescale=0.7)(x, t)
    torch.testing.assert_close(part.x0, mix, rtol=1e-9, atol=1e-9)
    abar = alpha_bar(SCHED, t, x)
    torch.testing.assert_close(part.x0 * abar.sqrt() + (1 - abar).sqrt() * part.eps, x,
                               rtol=1e-9, atol=1e-9)  # eps follows x0: x_t is kept


def test_guidance_interval_applies_w_only_on_its_sigmas():
    x = torch.randn(32, 2, generator=_gen(11), dtype=F64)
    labels, sampler = _labels(32), DPMSolverPP2M(steps=12)
    plain = sampler.sample(_cfg(labels=labels, scale=3.0), x)
    cond = sampler.sample(_cfg(labels=labels, scale=1.0), x)
    everywhere = _cfg(labels=labels, scale=3.0, interval=(0.0, math.inf))
    assert torch.equal(sampler.sample(everywhere, x), plain)
    for outside in ((500.0, 1000.0), (3.0, 3.0)):  # above sigma_max; a point on no grid
        counter = CountingNet(IdealConditionalNetwork(DATA, SCHED))
        model = _cfg(labels=labels, scale=3.0, interval=outside, net=counter)
        assert torch.equal(sampler.sample(model, x), cond)
        assert counter.rows == 32 * counter.calls == 32 * 12
    sigmas = sampler.sigmas(SCHED)[:-1]
    lo, hi = sorted(sigmas)[3], sorted(sigmas)[7]  # 5 of the 12 grid points, ends included
    counter = CountingNet(IdealConditionalNetwork(DATA, SCHED))
    part = _cfg(labels=labels, scale=3.0, interval=(lo, hi), net=counter)
    out = sampler.sample(part, x)
    assert counter.rows == 32 * (12 + 5)
    assert (out - plain).abs().max() > 1e-3 and (out - cond).abs().max() > 1e-3
    xt = x / 3
    for sigma in sigmas:
        want = (_cfg(labels=labels, scale=3.0) if lo <= sigma <= hi
                else _cfg(labels=labels, scale=1.0)).predict(xt, sigma)
        assert torch.equal(part.predict(xt, sigma).x0, want.x0), sigma
    mixed_t = torch.tensor([0, 999] * 16)
    mixed = part(xt, mixed_t)  # t = 0 is below lo, t = 999 above hi: neither is guided
    assert torch.equal(mixed.x0, _cfg(labels=labels)(xt, mixed_t).x0)


# ----------------------------------------------------------------- labels and validation


def test_classifier_guidance_wraps_any_denoiser_and_takes_labels():
    x, ts = _random_states(8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    clf = IdealClassifier(DATA, SCHED)
    base = _cfg(scale=2.0)
    cg = ClassifierGuidance.around(base, clf, 0.0).with_labels(labels)
    assert torch.equal(cg.base.labels, labels) and torch.equal(cg.labels, labels)
    torch.testing.assert_close(cg(x, ts[0]).eps, base.with_labels(labels)(x, ts[0]).eps,
                               rtol=0, atol=1e-12)  # s = 0: the base alone
    unc = ClassifierGuidance.around(_unconditional(), clf, 1.0)
    with pytest.raises(ValueError, match="labels"):
        unc(x, ts[0])
    assert unc.with_labels(labels).base is unc.base  # an unconditional base takes none
    with pytest.raises(ValueError, match="batch"):
        unc.with_labels(labels[:3])(x, ts[0])
    with pytest.raises(ValueError, match="scale"):
        ClassifierGuidance.around(base, clf, -1.0)
    with pytest.raises(ValueError, match="classes"):
        unc.with_labels(torch.full((8,), K))(x, ts[0])


def test_denoisers_validate_labels_and_options():
    den = _unconditional()
    assert den.with_labels(None) is den
    with pytest.raises(ValueError, match="^this model is unconditional: it takes no class labels$"):
        den.with_labels(_labels(2))
    with pytest.raises(ValueError, match="classes"):
        _cfg(labels=torch.tensor([0, K]))
    with pytest.raises(ValueError, match="classes"):
        _cfg(labels=torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="classes"):
        _cfg().with_labels(torch.tensor([0, 3]))
    for bad in (-0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="scale"):
            _cfg(scale=bad)
    for bad in ((2.0, 1.0), (-1.0, 1.0), (1.0,)):
        with pytest.raises(ValueError, match="interval"):
            _cfg(interval=bad)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="rescale"):
            _cfg(rescale=bad)
    with pytest.raises(ValueError, match="num_classes"):
        ClassifierFreeGuidance(IdealConditionalNetwork(DATA, SCHED), SCHED, num_classes=0)
    cfg = _cfg(scale=2.0).with_labels(_labels(2, 1))
    assert cfg.labels.tolist() == [1, 1] and cfg.scale == 2.0
    assert dataclasses.replace(cfg, labels=None).labels is None


def test_generate_with_labels_is_independent_of_the_batch_size():
    seeds = list(range(10))
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0, 2, 1, 1])
    model = _cfg(scale=2.0)
    sampler = DDPM(steps=20)  # stochastic: later noise comes from each seed's generator too
    a, b = (generate(sampler, model, (2,), seeds, bs, torch.device("cpu"), labels=labels)
            for bs in (3, 7))
    assert torch.equal(a, b)
    single = torch.cat([generate(sampler, model, (2,), [s], 1, torch.device("cpu"),
                                 labels=labels[i:i + 1]) for i, s in enumerate(seeds)])
    torch.testing.assert_close(a, single, rtol=0, atol=1e-6)
    other = generate(sampler, model, (2,), seeds, 3, torch.device("cpu"), labels=labels.flip(0))
    assert not torch.equal(a, other)  # the labels do reach the network
    with pytest.raises(ValueError, match="labels"):
        generate(sampler, model, (2,), seeds, 3, torch.device("cpu"), labels=labels[:4])
    with pytest.raises(ValueError, match="unconditional"):
        generate(sampler, _unconditional(), (2,), seeds, 3, torch.device("cpu"), labels=labels)


# ------------------------------------------------------------------ learned variances


def test_guided_ddpm_with_learned_variances_uses_the_conditional_branch_variance():
    """A learned-variance net (2C outputs, Nichol & Dhariwal 2021) whose variance half reads
    v = 0 (beta-tilde) with a label and v = 1 (beta) with the null label: guided DDPM
    (variance=auto, hence learned) takes the conditional branch's variance (as GLIDE) and
    guides only the prediction half, so it samples exactly as the fixed-variance net with
    beta-tilde; without labels, the null branch's, i.e. beta."""
    ideal = IdealConditionalNetwork(DATA, SCHED)

    def learned(x, t, y):
        raw = torch.where((y == K)[:, None], 1.0, -1.0).to(x).expand_as(x)
        return torch.cat([ideal(x, t, y), raw], dim=1)

    noise = torch.randn(64, 2, generator=_gen(12), dtype=F64)
    sampler = DDPM(steps=20)
    for labels, variance in ((_labels(64), "beta_tilde"), (None, "beta")):
        for scale in (0.0, 3.0):
            fixed = DDPM(steps=20, variance=variance).sample(
                _cfg(labels=labels, scale=scale), noise, generator=_gen(13))
            model = _cfg(labels=labels, scale=scale, net=learned, learned_variance=True)
            got = sampler.sample(model, noise, generator=_gen(13))
            torch.testing.assert_close(got, fixed, rtol=1e-12, atol=1e-12)
