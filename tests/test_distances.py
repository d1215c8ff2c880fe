"""Sample distances against direct computations: exact 1-D W2, brute-force MMD, known shifts."""

import math

import numpy as np
import pytest
import torch

from diffcli.eval.distances import gaussian_mmd, sliced_wasserstein, wasserstein2_1d

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _direct_w2(x, y):
    """W2 between two 1-D empirical measures by brute force: repeat each of the N points of x
    M times and each of the M points of y N times, so both become N*M equally weighted atoms,
    then match them in sorted order."""
    x, y = np.sort(np.repeat(x, len(y))), np.sort(np.repeat(y, len(x)))
    return math.sqrt(np.mean((x - y) ** 2))


def test_identical_samples_are_at_distance_zero():
    x = torch.randn(500, 3, generator=_gen(0), dtype=F64)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, x[torch.randperm(500, generator=_gen(1))]) == 0.0
    assert gaussian_mmd(x, x, unbiased=False) == pytest.approx(0.0, abs=1e-12)
    # The U-statistic of identical samples is -O(1/N) (it drops k(x_i, x_i) but not k(x_i, y_i)).
    assert -0.02 < gaussian_mmd(x, x) <= 0.0


@pytest.mark.parametrize(("n", "m"), [(40, 40), (30, 45), (7, 13), (64, 1)])
def test_sliced_wasserstein_in_1d_is_the_exact_w2(n, m):
    x = torch.randn(n, generator=_gen(n), dtype=F64)
    y = 0.5 + 2 * torch.randn(m, generator=_gen(m + 100), dtype=F64)
    expected = _direct_w2(x.numpy(), y.numpy())
    assert sliced_wasserstein(x, y) == pytest.approx(expected, rel=1e-12)
    assert sliced_wasserstein(x[:, None], y[:, None], n_projections=3) == pytest.approx(
        expected, rel=1e-12)


def test_w2_dominates_scipy_w1_in_1d():
    """W1 <= W2 (Jensen); scipy's wasserstein_distance is W1, an independent implementation."""
    stats = pytest.importorskip("scipy.stats")
    x = torch.randn(300, generator=_gen(2), dtype=F64)
    y = torch.randn(170, generator=_gen(3), dtype=F64).exp()
    w1 = stats.wasserstein_distance(x.numpy(), y.numpy())
    w2 = sliced_wasserstein(x, y)
    assert w1 <= w2 < 2 * w1, (w1, w2)
    # For a pure translation every coupling moves each atom by the shift: W1 = W2 = |c|.
    assert sliced_wasserstein(x, x + 0.7) == pytest.approx(0.7, rel=1e-12)
    assert stats.wasserstein_distance(x.numpy(), x.numpy() + 0.7) == pytest.approx(0.7)


def test_wasserstein2_1d_is_symmetric_and_handles_columns():
    x = torch.randn(25, 4, generator=_gen(4), dtype=F64)
    y = torch.randn(10, 4, generator=_gen(5), dtype=F64) + torch.arange(4, dtype=F64)
    w = wasserstein2_1d(x, y)
    torch.testing.assert_close(w, wasserstein2_1d(y, x), rtol=1e-12, atol=0)
    for j in range(4):
        assert w[j].sqrt().item() == pytest.approx(_direct_w2(x[:, j].numpy(), y[:, j].numpy()))


def test_sliced_wasserstein_is_linear_in_a_shift():
    """Translating by c projects to a shift <theta, c> on every direction, so SW_2 = |c| times
    the RMS of theta_1 over the directions: exactly linear, and about |c| / sqrt(D)."""
    x = torch.randn(2000, 2, generator=_gen(6), dtype=F64)
    e = torch.tensor([1.0, 0.0], dtype=F64)
    sw = [sliced_wasserstein(x, x + c * e) for c in (0.5, 1.0, 2.0, 4.0)]
    for c, d in zip((0.5, 1.0, 2.0, 4.0), sw, strict=True):
        assert d == pytest.approx(c * sw[1], rel=1e-10)
    assert sw[1] == pytest.approx(1 / math.sqrt(2), rel=0.1)


def test_distances_grow_with_the_shift_between_distributions():
    x = torch.randn(1000, 2, generator=_gen(7), dtype=F64)
    y = torch.randn(1000, 2, generator=_gen(8), dtype=F64)
    e = torch.tensor([1.0, 1.0], dtype=F64) / math.sqrt(2)
    sw = [sliced_wasserstein(x, y + c * e) for c in (0.0, 0.3, 1.0, 3.0)]
    mmd = [gaussian_mmd(x, y + c * e) for c in (0.0, 0.3, 1.0, 3.0)]
    assert sw == sorted(sw) and sw[0] < 0.1 < sw[1], sw
    assert mmd == sorted(mmd) and abs(mmd[0]) < 0.01 < mmd[1], mmd


def test_gaussian_mmd_matches_a_brute_force_double_sum():
    x = torch.randn(9, 2, generator=_gen(9), dtype=F64)
    y = torch.randn(6, 2, generator=_gen(10), dtype=F64) + 0.5
    hs = (0.1, 0.5, 1.0, 2.0)

    def k(a, b):
        return sum(math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h)) for h in hs)

    def mean_k(a, b, skip_diagonal):
        vals = [k(a[i], b[j]) for i in range(len(a)) for j in range(len(b))
                if not (skip_diagonal and i == j)]
        return sum(vals) / len(vals)

    biased = mean_k(x, x, False) + mean_k(y, y, False) - 2 * mean_k(x, y, False)
    unbiased = mean_k(x, x, True) + mean_k(y, y, True) - 2 * mean_k(x, y, False)
    assert gaussian_mmd(x, y, hs, unbiased=False) == pytest.approx(biased, rel=1e-12)
    assert gaussian_mmd(x, y, hs) == pytest.approx(unbiased, rel=1e-12)


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="dimension"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 3))


def _one_gaussian(mean, std):
    from diffcli.diffusion.gaussian import GaussianMixtureData

    return GaussianMixtureData(torch.ones(1, dtype=torch.float64),
                               torch.tensor([mean], dtype=torch.float64),
                               torch.tensor([std], dtype=torch.float64))


def test_fourier_features_of_a_mixture_in_closed_form_match_exact_draws():
    from diffcli.diffusion.gaussian import two_d_mixture
    from diffcli.eval.distances import FourierKernel

    data, kernel = two_d_mixture(), FourierKernel.gaussian(2, m=64)
    draws = kernel.features(data.sample(200_000, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(draws.mean(0), kernel.mixture_features(data), atol=5e-3, rtol=0)
    assert float((draws**2).sum(1).max()) == pytest.approx(1.0)  # k(x, x) = 1


def test_mmd_to_a_mixture_is_zero_for_exact_draws_and_grows_with_a_shift():
    from diffcli.diffusion.gaussian import two_d_mixture
    from diffcli.eval.distances import FourierKernel, mmd_to_mixture

    data, kernel = two_d_mixture(), FourierKernel.gaussian(2)
    x = data.sample(5000, torch.Generator().manual_seed(1))
    values = [mmd_to_mixture(x + c, data, kernel) for c in (0.0, 0.05, 0.2)]
    assert abs(values[0]) < 2e-4 and values[0] < values[1] < values[2]


def test_coupled_mmd_is_the_closed_form_mmd_with_a_small_error():
    """Pairs (x, x + c) of N(0, 1) in 2-D: the coupled estimate of MMD^2(N(0, 1), N(c, 1)) is
    unbiased: within 3 of its standard errors of the closed form |E phi(x) - E phi(y)|^2
    (:meth:`FourierKernel.mixture_features` of the two Gaussians), and that error is far below
    the O(1/N) scatter of independent sets."""
    from diffcli.eval.distances import FourierKernel, coupled_mmd

    kernel = FourierKernel.gaussian(2, m=512)
    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    c = torch.tensor([0.03, -0.02], dtype=torch.float64)
    exact = (kernel.mixture_features(_one_gaussian([0.0, 0.0], [1.0, 1.0]))
             - kernel.mixture_features(_one_gaussian(c.tolist(), [1.0, 1.0]))).pow(2).sum()
    value, se = coupled_mmd(kernel.features(x), kernel.features(x + c))
    assert abs(value - float(exact)) < 3 * se and se < 0.25 * float(exact)
    shuffled = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(3))] + c
    _, se_independent = coupled_mmd(kernel.features(x), kernel.features(shuffled))
    assert se_independent > 10 * se  # the same estimator on uncoupled pairs
    assert coupled_mmd(kernel.features(x), kernel.features(x)) == (0.0, 0.0)
