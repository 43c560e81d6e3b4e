"""The kernel Stein discrepancy and ``un.ksd_test`` (unnorm/stein.py and unnorm/stein_kernels.py).

Exact identities are checked against autodiff to float32 precision; statistical claims are
checked with tolerances from a standard error (DESIGN.md): the Stein identity with the exact
variance of a degenerate U-statistic, the test's size with a binomial tolerance of 4 standard
errors. Data are exact NumPy draws, so the observations are i.i.d. as the test assumes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un
from unnorm import stein_kernels

KERNELS = ("imq", "rbf")
GAUSS2 = un.models.gaussian(2)


def _floats(values) -> np.ndarray:
    """``values`` in JAX's default float dtype, cast on the host: the rounding of
    ``jnp.asarray(values, dtype=float)`` without the conversion program it compiles per
    shape."""
    return np.asarray(values, dtype=jnp.result_type(float))


# The kernel layer compiled, as the estimators and un.ksd_test run it: one program per kernel
# and shape, where a call outside jit compiled each of its operations on its own
kernel_value = jax.jit(stein_kernels.kernel_value, static_argnames="kernel")
stein_kernel_matrix = jax.jit(stein_kernels.stein_kernel_matrix, static_argnames="kernel")


def _rtol(dtype) -> float:
    # float32 closed forms vs autodiff differ by a few ulps of the largest term
    return 1e-5 if dtype == jnp.float32 else 1e-10


def _autodiff_stein(kernel: str, bandwidth: float):
    """u_p(x, y) assembled from the kernel by nested autodiff: the reference for the closed
    forms (Liu, Lee & Jordan 2016, eq. for u_q)."""

    def k(x, y):
        return stein_kernels.kernel_value(x, y, kernel=kernel, bandwidth=bandwidth)

    def u(sx, x, sy, y):
        grad_x = jax.grad(k, argnums=0)(x, y)
        grad_y = jax.grad(k, argnums=1)(x, y)
        cross = jax.jacfwd(jax.grad(k, argnums=1), argnums=0)(x, y)   # ∂²k / ∂x_a ∂y_b
        return sx @ sy * k(x, y) + sx @ grad_y + sy @ grad_x + jnp.trace(cross)

    return u


# ---- closed forms against autodiff --------------------------------------------------------------

@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bandwidth", [0.7, 2.5])
def test_kernel_derivatives_match_autodiff(kernel, bandwidth):
    rng = np.random.default_rng(0)
    xs = _floats(rng.normal(size=(5, 3)))
    ys = _floats(rng.normal(size=(5, 3)))
    ys[0] = xs[0]                                             # include x = y (q = 0)

    def k(x, y):
        return stein_kernels.kernel_value(x, y, kernel=kernel, bandwidth=bandwidth)

    @jax.jit
    @jax.vmap
    def closed_and_autodiff(x, y):
        closed = stein_kernels.kernel_and_derivatives(x, y, kernel=kernel, bandwidth=bandwidth)
        cross = jax.jacfwd(jax.grad(k, argnums=1), argnums=0)(x, y)   # ∂²k / ∂x_a ∂y_b
        auto = (k(x, y), jax.grad(k, argnums=0)(x, y), jax.grad(k, argnums=1)(x, y),
                jnp.trace(cross))
        return closed, auto

    closed, auto = closed_and_autodiff(xs, ys)
    for got, expected in zip(closed, auto, strict=True):
        np.testing.assert_allclose(got, expected, rtol=_rtol(xs.dtype), atol=1e-6)


def test_kernel_values_by_hand():
    x, y = _floats([0.0, 0.0]), _floats([3.0, 4.0])          # ‖x - y‖ = 5
    # IMQ (1 + 25/h²)^(-1/2) with h = 5: 2^(-1/2); RBF exp(-25 / (2·25)) = e^(-1/2)
    assert float(kernel_value(x, y, kernel="imq", bandwidth=5.0)) == pytest.approx(
        2**-0.5, rel=1e-6)
    assert float(kernel_value(x, y, kernel="rbf", bandwidth=5.0)) == pytest.approx(
        np.exp(-0.5), rel=1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
def test_stein_kernel_matrix_matches_autodiff(kernel):
    rng = np.random.default_rng(1)
    n, d, h = 7, 3, 1.3
    x = _floats(rng.normal(size=(n, d)))
    # the formula holds for any vector field s, not only true scores
    s = _floats(rng.normal(size=(n, d)))
    u = _autodiff_stein(kernel, h)
    pair = jax.vmap(jax.vmap(u, in_axes=(None, None, 0, 0)), in_axes=(0, 0, None, None))
    expected = np.asarray(jax.jit(pair)(s, x, s, x))
    got = np.asarray(stein_kernel_matrix(s, x, kernel=kernel, bandwidth=h))
    assert got.shape == (n, n)
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(got, expected, rtol=_rtol(x.dtype), atol=2e-6 * scale)
    np.testing.assert_allclose(got, got.T, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("kernel", KERNELS)
def test_blocks_cross_and_translation_agree_with_the_full_matrix(kernel):
    rng = np.random.default_rng(2)
    n, d, h = 11, 2, 0.9
    x = _floats(rng.normal(size=(n, d)))
    s = _floats(rng.normal(size=(n, d)))
    blocks = (None, 1, 4, 50)                          # 4 leaves a padded last block

    @jax.jit
    def forms(s, x):
        # every form the test compares, as one program rather than one per operation
        def matrix(points):
            return stein_kernels.stein_kernel_matrix(s, points, kernel=kernel, bandwidth=h)

        row_means = [stein_kernels.stein_row_means(s, x, kernel=kernel, bandwidth=h,
                                                   block_size=block) for block in blocks]
        ustat = stein_kernels.ksd_ustat(s, x, kernel=kernel, bandwidth=h, block_size=3)
        cross = stein_kernels.stein_kernel_cross(s[:4], x[:4], s[4:], x[4:], kernel=kernel,
                                                 bandwidth=h)
        # distances are translation invariant; the centring keeps float32 accurate far from 0
        return matrix(x), row_means, ustat, cross, matrix(x + 50.0)

    full, row_means, ustat, cross, shifted = forms(s, x)
    # the references from the full matrix, in float64
    off = np.asarray(full, dtype=np.float64)
    np.fill_diagonal(off, 0.0)
    rows = off.sum(axis=1) / (n - 1)
    for got in row_means:
        np.testing.assert_allclose(got, rows, rtol=1e-5, atol=1e-6)
    assert float(ustat) == pytest.approx(float(off.sum()) / (n * (n - 1)), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(cross, np.asarray(full)[:4, 4:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(shifted, full, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kernel", KERNELS)
def test_gram_form_equals_the_pairwise_ustat_and_its_gradient(kernel):
    """Û through the precomputed kernel matrix (the estimator's full-batch step) is the blockwise
    pairwise sum, in value and in its gradient in the scores, for data far from the origin."""
    rng = np.random.default_rng(7)
    n, h = 57, 1.3
    x = _floats(rng.normal(size=(n, 3)) * 2.0 + 40.0)
    s = _floats(rng.normal(size=(n, 3)))

    @jax.jit
    def both_forms(s, x):
        # the Gram pieces and both values and gradients as one program, not one per operation
        def pairwise(scores):
            return stein_kernels.ksd_ustat(scores, x, kernel=kernel, bandwidth=h, block_size=5)

        gram = stein_kernels.stein_gram(x, kernel=kernel, bandwidth=h)
        return (gram, jax.value_and_grad(lambda sc: stein_kernels.gram_ustat(sc, gram))(s),
                jax.value_and_grad(pairwise)(s))

    gram, (value, grad), (expected, expected_grad) = both_forms(s, x)
    assert float(np.max(np.abs(np.diag(gram.weights)))) == 0.0
    # float32 sums of n² terms of size O(1): agreement to ~1e-5 of the terms' scale
    assert float(value) == pytest.approx(float(expected), rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="scores must have shape"):
        stein_kernels.gram_ustat(s[:-1], gram)
    with pytest.raises(ValueError, match="n >= 2"):
        stein_kernels.stein_gram(x[:1], kernel=kernel, bandwidth=h)


@pytest.mark.parametrize("kernel", KERNELS)
def test_ustat_is_jittable_and_differentiable_in_theta(kernel):
    """The estimator differentiates Û in θ through the scores: compare with the gradient of the
    same U-statistic assembled by nested autodiff."""
    rng = np.random.default_rng(3)
    n, h = 40, 1.1
    x = _floats(rng.normal(size=(n, 2)))
    u = _autodiff_stein(kernel, h)
    pair = jax.vmap(jax.vmap(u, in_axes=(None, None, 0, 0)), in_axes=(0, 0, None, None))
    mask = 1.0 - np.eye(n, dtype=x.dtype)

    def closed(mu):
        return stein_kernels.ksd_ustat(-(x - mu), x, kernel=kernel, bandwidth=h, block_size=16)

    @jax.jit
    def reference(mu):
        s = -(x - mu)
        return jnp.sum(pair(s, x, s, x) * mask) / (n * (n - 1))

    mu = _floats([0.3, -0.2])
    np.testing.assert_allclose(jax.jit(closed)(mu), reference(mu), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(closed))(mu), jax.jit(jax.grad(reference))(mu),
                               rtol=1e-4, atol=1e-6)


def test_median_bandwidth():
    assert stein_kernels.median_bandwidth(np.array([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)
    # the model, data shape and num_bootstrap of test_matrix_events_are_flattened: one
    # compilation serves both
    x = np.random.default_rng(4).normal(size=(120, 4))
    i, j = np.triu_indices(120, k=1)
    truth = np.median(np.linalg.norm(x[i] - x[j], axis=1))
    assert stein_kernels.median_bandwidth(x) == pytest.approx(truth, rel=1e-5)
    test = un.ksd_test(un.models.gaussian(4), None, x, key=jax.random.key(0), num_bootstrap=100)
    assert test.bandwidth == pytest.approx(truth, rel=1e-5)


# ---- the Stein identity -------------------------------------------------------------------------

def test_stein_identity_null_and_alternative():
    """Under H0, E u_p(x, ·) = 0: Û is a degenerate U-statistic with variance
    2 E[u²] / (n(n-1)); under a mean shift it is positive by many Hájek standard errors."""
    mean, prec = np.array([1.0, -1.0]), np.array([[2.0, 0.6], [0.6, 1.0]])
    model = un.models.gaussian(2, mean=mean, precision=prec)
    n = 2000
    rng = np.random.default_rng(5)
    x0 = rng.multivariate_normal(mean, np.linalg.inv(prec), size=n)
    for shift, null in ((0.0, True), (0.5, False)):
        x = x0 + np.array([shift, 0.0])
        h = stein_kernels.median_bandwidth(x)
        scores = -(x - mean) @ prec
        for kernel in KERNELS:
            full = np.asarray(stein_kernel_matrix(_floats(scores), _floats(x), kernel=kernel,
                                                  bandwidth=h), dtype=np.float64)
            np.fill_diagonal(full, 0.0)
            ustat = full.sum() / (n * (n - 1))
            assert un.stein.ksd(model, None, x, kernel=kernel) == pytest.approx(
                ustat, rel=1e-3, abs=1e-6)
            if null:
                se = np.sqrt(2.0 * np.sum(full**2) / (n * (n - 1)) / (n * (n - 1)))
                assert abs(ustat) < 4 * se, (kernel, ustat, se)
            else:
                rows = full.sum(axis=1) / (n - 1)
                se = 2.0 * rows.std(ddof=1) / np.sqrt(n)
                assert ustat > 10 * se, (kernel, ustat, se)


# ---- the test: size, power, keys ----------------------------------------------------------------

def _rejections(model, shift, reps, n, d, kernel="imq", seed=0, num_bootstrap=200):
    rng = np.random.default_rng(seed)
    pvalues = []
    for r in range(reps):
        x = rng.normal(size=(n, d))
        x[:, 0] += shift
        test = un.ksd_test(model, None, x, key=jax.random.key(r), kernel=kernel,
                           num_bootstrap=num_bootstrap)
        pvalues.append(test.pvalue)
    return np.asarray(pvalues)


@pytest.mark.parametrize("kernel", KERNELS)
def test_size_under_the_null(kernel):
    """200 data sets from the model (d = 2, n = 200): rejections at 5% ~ Binomial(200, 0.05),
    so <= 0.05 + 4·0.0154 = 0.11; the p-values are about uniform (mean 1/2 ± 4·0.020)."""
    pvalues = _rejections(GAUSS2, 0.0, reps=200, n=200, d=2, kernel=kernel, seed=10)
    assert np.mean(pvalues <= 0.05) <= 0.11
    assert abs(np.mean(pvalues) - 0.5) < 4 * np.sqrt(1 / 12 / 200)


@pytest.mark.parametrize("kernel", KERNELS)
def test_power_against_a_mean_shift(kernel):
    """A shift of 0.5 sd (d = 2, n = 200) was rejected in 100% of 100 data sets in a pilot run
    (and a shift of 0.25 in 87%); require 80%."""
    pvalues = _rejections(GAUSS2, 0.5, reps=50, n=200, d=2, kernel=kernel, seed=11)
    assert np.mean(pvalues <= 0.05) >= 0.8


@pytest.mark.slow
@pytest.mark.parametrize("d, n", [(2, 200), (5, 100)])
def test_size_under_the_null_large_study(d, n):
    """2000 data sets: the size at 1%, 5%, 10% within 4 binomial standard errors."""
    pvalues = _rejections(un.models.gaussian(d), 0.0, reps=2000, n=n, d=d, seed=12)
    for level in (0.01, 0.05, 0.10):
        se = np.sqrt(level * (1 - level) / 2000)
        assert abs(np.mean(pvalues <= level) - level) < 4 * se, level


def test_same_key_same_pvalue():
    # the data shape and num_bootstrap of the size and power tests, whose programs serve here
    x = np.random.default_rng(6).normal(size=(200, 2))
    a = un.ksd_test(GAUSS2, None, x, key=jax.random.key(3), num_bootstrap=200)
    b = un.ksd_test(GAUSS2, GAUSS2.params, x, key=jax.random.key(3), num_bootstrap=200)
    assert a == b
    legacy = un.ksd_test(GAUSS2, None, x, key=jax.random.PRNGKey(3), num_bootstrap=200)
    assert legacy.statistic == a.statistic
    others = {un.ksd_test(GAUSS2, None, x, key=jax.random.key(k), num_bootstrap=200).pvalue
              for k in range(5)}
    assert len(others | {a.pvalue}) > 1
    # the statistic does not depend on the key, and is n times the U-statistic of un.stein.ksd
    assert all(isinstance(v, float) for v in (a.statistic, a.pvalue, a.ksd, a.bandwidth))
    assert a.statistic == pytest.approx(200 * un.stein.ksd(GAUSS2, None, x), rel=1e-4, abs=1e-5)
    assert a.ksd == pytest.approx(a.statistic / 200)
    assert (a.kernel, a.num_bootstrap, a.n, a.level) == ("imq", 200, 200, 0.05)
    assert a.reject == (a.pvalue <= 0.05)
    assert 1 / 201 <= a.pvalue <= 1


def test_matrix_events_are_flattened():
    """A (2, 2) event with a standard-normal energy is the 4-D standard normal on flat rows."""
    flat = un.models.gaussian(4)
    matrix = un.Model(lambda p, x: 0.5 * jnp.sum((x - p["m"]) ** 2), params={"m": jnp.zeros(())},
                      support=un.supports.real((2, 2)))
    x = np.random.default_rng(7).normal(size=(120, 4))
    a = un.ksd_test(flat, None, x, key=jax.random.key(0), num_bootstrap=100)
    b = un.ksd_test(matrix, None, x.reshape(120, 2, 2), key=jax.random.key(0), num_bootstrap=100)
    assert b.statistic == pytest.approx(a.statistic, rel=1e-4, abs=1e-5)
    assert b.pvalue == a.pvalue and b.bandwidth == pytest.approx(a.bandwidth, rel=1e-6)


# ---- bounded supports through the unconstrained space ------------------------------------------

def _exponential(rate=2.0):
    return un.Model(lambda p, x: p["rate"] * jnp.sum(x), params={"rate": jnp.asarray(rate)},
                    constraints={"rate": un.constraints.positive},
                    support=un.supports.positive(1))


def test_unconstrained_on_a_positive_support():
    """Exponential(2): y = log x has density p(e^y) e^y. Size over 100 data sets within
    Binomial(100, 0.05) + 4 SE = 0.137; a wrong rate (1 instead of 2, n = 300) is rejected."""
    model = _exponential()
    rng = np.random.default_rng(8)
    pvalues = [
        un.ksd_test(model, None, rng.exponential(0.5, size=(100, 1)), key=jax.random.key(r),
                    num_bootstrap=200, unconstrained=True).pvalue
        for r in range(100)
    ]
    assert np.mean(np.asarray(pvalues) <= 0.05) <= 0.137
    x = rng.exponential(0.5, size=(300, 1))
    wrong = un.ksd_test(model, {"rate": 1.0}, x, key=jax.random.key(0), unconstrained=True)
    assert wrong.reject and wrong.pvalue < 0.01


# ---- bad inputs ---------------------------------------------------------------------------------

X_OK = np.random.default_rng(9).normal(size=(30, 2))
KEY = jax.random.key(0)


def test_bad_kernel_bandwidth_bootstrap_level():
    with pytest.raises(ValueError, match=r"unknown kernel 'gauss'; choose one of 'imq', 'rbf'"):
        un.ksd_test(GAUSS2, None, X_OK, key=KEY, kernel="gauss")
    with pytest.raises(ValueError, match=r"unknown kernel 'gauss'"):
        un.stein.ksd(GAUSS2, None, X_OK, kernel="gauss")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="bandwidth must be a finite number > 0"):
            un.ksd_test(GAUSS2, None, X_OK, key=KEY, bandwidth=bad)
    with pytest.raises(ValueError, match="unknown bandwidth 'scott'.*'median'"):
        un.ksd_test(GAUSS2, None, X_OK, key=KEY, bandwidth="scott")
    with pytest.raises(TypeError, match="bandwidth must be 'median' or a positive number"):
        un.ksd_test(GAUSS2, None, X_OK, key=KEY, bandwidth=[1.0])
    with pytest.raises(ValueError, match="num_bootstrap must be >= 1; got 0"):
        un.ksd_test(GAUSS2, None, X_OK, key=KEY, num_bootstrap=0)
    with pytest.raises(TypeError, match="num_bootstrap must be an integer"):
        un.ksd_test(GAUSS2, None, X_OK, key=KEY, num_bootstrap=10.5)
    with pytest.raises(ValueError, match="level must lie strictly between 0 and 1"):
        un.ksd_test(GAUSS2, None, X_OK, key=KEY, level=1.5)


def test_bad_key_model_params():
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        un.ksd_test(GAUSS2, None, X_OK, key=3)
    with pytest.raises(TypeError, match="model must be an unnorm.Model"):
        un.ksd_test("gaussian", None, X_OK, key=KEY)
    with pytest.raises(ValueError, match=r"params\['prec'\] has shape \(3, 3\)"):
        un.ksd_test(GAUSS2, {"mu": jnp.zeros(2), "prec": jnp.eye(3)}, X_OK, key=KEY)


def test_bad_data():
    x = X_OK.copy()
    x[7, 1] = np.nan
    with pytest.raises(ValueError, match="data contains 1 NaN.*first at row 7"):
        un.ksd_test(GAUSS2, None, x, key=KEY)
    with pytest.raises(ValueError, match=r"data has shape \(30, 3\).*needs shape \(n, 2\)"):
        un.ksd_test(GAUSS2, None, np.zeros((30, 3)), key=KEY)
    with pytest.raises(ValueError, match="needs at least 2"):
        un.ksd_test(GAUSS2, None, X_OK[:1], key=KEY)
    with pytest.raises(ValueError, match="median heuristic gives bandwidth 0"):
        un.ksd_test(GAUSS2, None, np.ones((10, 2)), key=KEY)


def test_score_not_finite_names_the_row():
    # ‖x‖ has no gradient at 0: autodiff gives NaN there
    cone = un.Model(lambda p, x: p["a"] * jnp.sqrt(jnp.sum(x**2)), params={"a": jnp.asarray(1.0)},
                    support=un.supports.real(2))
    x = X_OK.copy()
    x[4] = 0.0
    with pytest.raises(ValueError, match=r"score .* NaN or infinite.*\(first at row 4"):
        un.ksd_test(cone, None, x, key=KEY)


def test_unsupported_supports():
    ising = un.models.ising(J=jnp.array([0.5, 0.5, 0.5]), h=jnp.zeros(3))
    spins = np.where(np.random.default_rng(0).random((20, 3)) < 0.5, -1.0, 1.0)
    with pytest.raises(ValueError, match="needs a continuous support.*spin"):
        un.ksd_test(ising, None, spins, key=KEY)
    with pytest.raises(ValueError, match="boundary of the support.*unconstrained=True"):
        un.ksd_test(_exponential(), None, np.full((20, 1), 0.5) + X_OK[:20, :1] ** 2, key=KEY)
    box = un.Model(lambda p, x: p["a"] * jnp.sum(x), params={"a": jnp.asarray(1.0)},
                   support=un.supports.interval(0.0, 1.0, 1))
    at_edge = np.linspace(0.0, 0.9, 10)[:, None]               # row 0 lies on the lower bound
    with pytest.raises(ValueError, match="data row 0 lies on the boundary"):
        un.ksd_test(box, None, at_edge, key=KEY, unconstrained=True)
