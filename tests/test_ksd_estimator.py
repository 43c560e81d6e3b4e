"""Minimum kernel Stein discrepancy estimation: θ against known truths, the U-statistic sandwich
standard errors, the derivatives behind Newton's steps, and bad inputs.

Data are exact i.i.d. draws (NumPy; rejection sampling for the non-Gaussian model), so the
sandwich standard errors apply. Model objects are shared so compiled code is reused.
"""

from __future__ import annotations

import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import unnorm as un
from unnorm import stein_kernels
from unnorm.estimators import Batch
from unnorm.estimators import stein as ksd_module
from unnorm.estimators.stein import _derivatives

KEY = jax.random.key(0)
COV = np.array([[1.0, 0.6], [0.6, 2.0]])
MU = np.array([1.0, -0.5])
PREC = np.linalg.inv(COV)
GAUSSIAN = un.models.gaussian(2)


def _gaussian_draws(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).multivariate_normal(MU, COV, size=n)


def _z(fit, name: str, truth) -> np.ndarray:
    return np.ravel((np.asarray(fit.params[name]) - truth) / fit.stderr[name])


# ---- Gaussian, d = 2 ----------------------------------------------------------------------------

def test_ksd_recovers_a_correlated_gaussian_by_name():
    n = 1000
    fit = un.fit(GAUSSIAN, _gaussian_draws(n, 3), "ksd", key=KEY, progress_bar=False)
    assert fit.estimator == "ksd" and fit.converged
    assert fit.method in ("newton", "optimizer + newton")
    assert np.max(np.abs(_z(fit, "mu", MU))) < 4
    assert np.max(np.abs(_z(fit, "prec", PREC))) < 4
    # KSD cannot beat the MLE asymptotically, and with the IMQ kernel at the median bandwidth it
    # nearly matches it for a Gaussian mean: its asymptotic SE, evaluated at the truth on 4000
    # draws, is 1.00-1.02 times the MLE's sqrt(Σ_jj / n). The estimated SE carries a few percent
    # of sampling noise at n = 1000, hence the lower bound below 1.
    ratio = fit.stderr["mu"] / np.sqrt(np.diag(COV) / n)
    assert np.all(ratio > 0.9) and np.all(ratio < 1.3), ratio


def test_same_key_same_fit_and_the_rbf_kernel():
    x = _gaussian_draws(200, 4)
    estimator = un.estimators.KSD(kernel="rbf")
    fits = [un.fit(GAUSSIAN, x, estimator, key=jax.random.key(5), progress_bar=False)
            for _ in range(2)]
    for name in ("mu", "prec"):
        np.testing.assert_array_equal(fits[0].params[name], fits[1].params[name])
        np.testing.assert_array_equal(fits[0].stderr[name], fits[1].stderr[name])
    assert fits[0].options == {"kernel": "rbf", "bandwidth": "median"}
    assert np.max(np.abs(_z(fits[0], "mu", MU))) < 4
    assert np.max(np.abs(_z(fits[0], "prec", PREC))) < 4


def test_minibatches_and_a_fixed_bandwidth():
    # with minibatches the optimizer only gets near θ̂; Newton on the full data finishes, so the
    # answer matches the full-batch fit of the same (fixed-bandwidth) objective
    x = _gaussian_draws(200, 6)
    estimator = un.estimators.KSD(bandwidth=1.5)
    mini = un.fit(GAUSSIAN, x, estimator, key=KEY, batch_size=50, num_steps=1000,
                  progress_bar=False)
    full = un.fit(GAUSSIAN, x, estimator, key=KEY, progress_bar=False)
    for name in ("mu", "prec"):
        np.testing.assert_allclose(mini.params[name], full.params[name], atol=2e-3)
        np.testing.assert_allclose(mini.stderr[name], full.stderr[name], rtol=1e-2)


def test_without_standard_errors_the_optimizer_answer_stands():
    x = _gaussian_draws(200, 6)
    fit = un.fit(GAUSSIAN, x, "ksd", key=KEY, stderr=False, progress_bar=False)
    full = un.fit(GAUSSIAN, x, "ksd", key=KEY, progress_bar=False)
    assert fit.method == "optimizer" and fit.stderr is None and fit.num_steps > 0
    for name in ("mu", "prec"):
        np.testing.assert_allclose(fit.params[name], full.params[name], atol=0.1 * np.max(
            full.stderr[name]))


# ---- a non-Gaussian exponential family ----------------------------------------------------------

QUARTIC_TRUTH = {"a": 1.0, "b": -1.0, "c": 0.5}


def _quartic_energy(params, x):
    # a double well: linear in (a, b, c), so KSD's objective is quadratic in them
    return (params["a"] * jnp.sum(x**4) / 4 + params["b"] * jnp.sum(x**2) / 2
            + params["c"] * x[0] * x[1])


QUARTIC = un.Model(_quartic_energy,
                   params={"a": jnp.asarray(1.0), "b": jnp.asarray(0.0), "c": jnp.asarray(0.0)},
                   constraints={"a": un.constraints.positive}, support=un.supports.real(2),
                   name="quartic")


def _quartic_draws(n: int, seed: int, scale: float = 1.2) -> np.ndarray:
    """Rejection sampling from N(0, scale² I), the envelope bounded on a fine grid."""
    a, b, c = (QUARTIC_TRUTH[k] for k in "abc")

    def log_ratio(x):
        energy = a * np.sum(x**4, 1) / 4 + b * np.sum(x**2, 1) / 2 + c * x[:, 0] * x[:, 1]
        return -energy + np.sum(x**2, 1) / (2 * scale**2)

    grid = np.stack(np.meshgrid(*[np.linspace(-4, 4, 801)] * 2), -1).reshape(-1, 2)
    bound = np.max(log_ratio(grid)) + 0.1
    rng = np.random.default_rng(seed)
    kept = []
    while sum(len(k) for k in kept) < n:
        y = rng.normal(scale=scale, size=(4 * n, 2))
        kept.append(y[np.log(rng.uniform(size=len(y))) < log_ratio(y) - bound])
    return np.concatenate(kept)[:n]


@pytest.mark.slow
def test_ksd_recovers_a_double_well():
    x = _quartic_draws(600, 7)
    # the x⁴ and x² coefficients are strongly correlated, which slows Adam at its default rate;
    # a larger one gets near faster and Newton's steps finish the job
    fit = un.fit(QUARTIC, x, "ksd", key=KEY, optimizer=optax.adam(0.1), progress_bar=False)
    assert fit.method == "optimizer + newton"
    # straight Newton from the initial values (the default route for small models when the
    # driver takes it) lands on the same minimizer
    direct = un.fit(QUARTIC, x, "ksd", key=KEY, progress_bar=False)
    for name in QUARTIC_TRUTH:
        assert abs(float(direct.params[name] - fit.params[name])) < 0.02 * float(fit.stderr[name])
    z = np.array([float(_z(fit, k, v)[0]) for k, v in QUARTIC_TRUTH.items()])
    assert np.max(np.abs(z)) < 4, z


# ---- the derivatives behind Newton's steps and the standard errors ------------------------------

def _curved_energy(params, x):
    return (params["a"] * jnp.sum(x**4) / 4 + params["b"] * jnp.sum(x**2) / 2
            + jnp.sin(params["m"] @ x))    # a score nonlinear in θ: the curvature term


# one object for the tests below: the programs compiled for it (keyed on the model) serve them all
CURVED = un.Model(_curved_energy, params={"a": jnp.asarray(1.2), "b": jnp.asarray(-0.7),
                                          "m": jnp.array([0.2, -0.1])},
                  constraints={"a": un.constraints.positive}, support=un.supports.real(2))


@pytest.mark.parametrize("kernel", ["imq", pytest.param("rbf", marks=pytest.mark.slow)])
def test_closed_form_derivatives_match_autodiff(kernel):
    model = CURVED
    x = jnp.asarray(np.random.default_rng(0).normal(size=(37, 2)), dtype=jnp.float32)
    u = model.to_unconstrained(model.params)
    flat, unravel = ravel_pytree(u)

    def row_means(f):
        params = model.to_constrained(unravel(f))
        scores = jax.vmap(lambda xi: model.score(params, xi))(x)
        return stein_kernels.stein_row_means(scores, x, kernel=kernel, bandwidth=0.9)

    def objective(f):
        return jnp.mean(row_means(f))

    # blocks of 8 rows: the padded last block is exercised too
    value, grad, hessian, h1 = _derivatives(flat, u, x, 0.9, model=model, kernel=kernel,
                                            block_size=8)
    # the references by nested autodiff through the Stein matrix (jitted: eager is slow)
    references = jax.jit(lambda f: (objective(f), jax.grad(objective)(f),
                                    jax.hessian(objective)(f), jax.jacfwd(row_means)(f)))(flat)
    for mine, reference in zip((value, grad, hessian, h1), references, strict=True):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-5)


def test_full_batch_loss_through_the_kernel_matrix_equals_the_pairwise_loss():
    """The full-batch step reads Û from the data's kernel matrix, made once at init; a data set
    beyond the matrix's size limit (here: a limit of 0) takes the pairwise path. Same value."""
    model = CURVED
    x = jnp.asarray(np.random.default_rng(4).normal(size=(61, 2)), dtype=jnp.float32)
    objective = un.estimators.KSD().build(model, False)
    state = objective.init(model.params, jax.random.key(0), x)
    assert isinstance(state.gram, stein_kernels.SteinGram)
    batch = Batch(x, jnp.arange(61))
    # jitted, as the fit's steps call it: two programs rather than dozens of eager operations
    loss = jax.jit(lambda state: objective.loss(model.params, state, batch, None)[0])
    with_gram = loss(state)
    pairwise = loss(state._replace(gram=()))
    assert float(with_gram) == pytest.approx(float(pairwise), rel=1e-4, abs=1e-6)
    with mock.patch.object(ksd_module, "GRAM_MAX_ENTRIES", 0):
        assert objective.init(model.params, jax.random.key(0), x).gram == ()


def test_derivatives_read_from_the_kernel_matrix_match_the_blocked_ones():
    """Newton's steps and the sandwich read the data's kernel matrix (φ' as a function of φ)
    where a full-batch fit has one; the blocked pass evaluates the kernel afresh. Same
    numbers, to float32 rounding."""
    q = jnp.linspace(0.0, 30.0, 61)
    for name in stein_kernels.KERNELS:
        phi, slope, _ = stein_kernels.kernel_profile(name, q, 1.7)
        np.testing.assert_allclose(stein_kernels.kernel_slope(name, phi, 1.7), slope,
                                   rtol=1e-5, atol=1e-7)
    kernel = "imq"
    model = CURVED
    x = jnp.asarray(np.random.default_rng(0).normal(size=(37, 2)), dtype=jnp.float32)
    u = model.to_unconstrained(model.params)
    flat, _ = ravel_pytree(u)
    blocked = _derivatives(flat, u, x, 0.9, model=model, kernel=kernel, block_size=8)
    gram = stein_kernels.stein_gram(x, kernel=kernel, bandwidth=0.9)
    from_gram = ksd_module._gram_derivatives(flat, u, x, gram, 0.9, model=model, kernel=kernel,
                                             with_h1=True)
    for mine, reference in zip(from_gram, blocked, strict=True):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)


def test_pair_sums_of_row_slices_add_up_to_the_whole():
    """A fit over several devices sums each device's rows of the Stein matrix against every
    column (estimators.stein._pair_sums) and adds the sums. Rows 0-18 and 19-39 of 37
    observations (three copies of the last past the end, as sharding pads them), in blocks of 8
    that divide neither slice: the sums are the whole data's, and the padding and the blocks'
    own padding add nothing."""
    model = CURVED
    x = jnp.asarray(np.random.default_rng(0).normal(size=(37, 2)), dtype=jnp.float32)
    padded = x[np.minimum(np.arange(40), 36)]
    u = model.to_unconstrained(model.params)
    flat, _ = ravel_pytree(u)

    @jax.jit
    def halves(flat):
        def pair_sums(rows, first_row):
            value, grad, hessian, h1 = ksd_module._pair_sums(
                flat, u, rows, first_row, x, 0.9, model=model, kernel="imq", block_size=8)
            return value, grad, hessian, h1.T @ h1
        return [a + b for a, b in zip(pair_sums(padded[:19], 0), pair_sums(padded[19:], 19),
                                      strict=True)]

    value, grad, hessian, outer = halves(flat)
    whole = _derivatives(flat, u, x, 0.9, model=model, kernel="imq", block_size=8)
    np.testing.assert_allclose(value / 37, whole[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad / 37, whole[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hessian / 37, whole[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outer, whole[3].T @ whole[3], rtol=1e-5, atol=1e-6)


def test_a_minibatch_fit_builds_no_kernel_matrix():
    x = _gaussian_draws(200, 6)
    objective = un.estimators.KSD().build(GAUSSIAN, resample=False)
    state = objective.init_minibatch(GAUSSIAN.params, KEY, jnp.asarray(x, dtype=jnp.float32))
    assert state.gram == ()
    # the options and shapes of test_minibatches_and_a_fixed_bandwidth: its compiled code serves
    with mock.patch.object(ksd_module, "stein_gram", side_effect=AssertionError("built")):
        fit = un.fit(GAUSSIAN, x, un.estimators.KSD(bandwidth=1.5), key=KEY, batch_size=50,
                     num_steps=200, progress_bar=False)
    assert fit.method == "optimizer + newton" and fit.converged


def test_estimator_and_test_share_one_bandwidth_rule():
    # 6000 rows: beyond the number of observations the median heuristic looks at (5000, here
    # lowered to 500, which takes the same subsampling path at a hundredth of the pairs), where
    # two rules could differ
    x = _gaussian_draws(6000, seed=1)
    objective = un.estimators.KSD().build(GAUSSIAN, resample=False)
    # the bandwidth is all this test reads: no 6000 × 6000 kernel matrix (the path of a data
    # set beyond the matrix's size limit, which takes the bandwidth the same way)
    with mock.patch.object(stein_kernels, "_MEDIAN_MAX_POINTS", 500), \
            mock.patch.object(ksd_module, "GRAM_MAX_ENTRIES", 0):
        state = objective.init(GAUSSIAN.params, KEY, jnp.asarray(x))
        rule = stein_kernels.median_bandwidth(x)
    assert state.gram == ()
    assert float(state.bandwidth) == pytest.approx(rule, rel=1e-6)
    test = un.ksd_test(GAUSSIAN, GAUSSIAN.params, x[:200], key=KEY, num_bootstrap=10)
    assert test.bandwidth == pytest.approx(stein_kernels.median_bandwidth(x[:200]), rel=1e-12)
    # more than half of the pairs coincide: both say so instead of using a degenerate kernel
    ties = np.asarray([[0.0, 0.0]] * 8 + [[1.0, 0.0], [3.0, 0.0]])
    with pytest.raises(ValueError, match="median heuristic gives bandwidth 0"):
        un.fit(GAUSSIAN, ties, "ksd", key=KEY, progress_bar=False)


# ---- bad inputs ---------------------------------------------------------------------------------

def test_bad_kernel_and_bandwidth():
    with pytest.raises(ValueError, match="unknown kernel 'gauss'.*'imq', 'rbf'"):
        un.estimators.KSD(kernel="gauss")
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="bandwidth must be a finite number > 0"):
            un.estimators.KSD(bandwidth=bad)
    with pytest.raises(ValueError, match="unknown bandwidth 'silverman'"):
        un.estimators.KSD(bandwidth="silverman")
    with pytest.raises(TypeError, match="bandwidth must be 'median' or a positive number"):
        un.estimators.KSD(bandwidth=[1.0])


def test_discrete_and_bounded_supports_are_refused():
    spins = np.where(np.random.default_rng(0).uniform(size=(50, 4)) < 0.5, -1.0, 1.0)
    with pytest.raises(ValueError, match="continuous support.*estimator='pl'"):
        un.fit(un.models.ising_chain(4), spins, "ksd", key=KEY, progress_bar=False)
    positive = un.Model(lambda params, x: params["rate"] * jnp.sum(x),
                        params={"rate": jnp.asarray(1.0)},
                        constraints={"rate": un.constraints.positive},
                        support=un.supports.positive(1))
    with pytest.raises(ValueError, match="boundary of the support.*estimator='sm'"):
        un.fit(positive, np.ones((50, 1)), "ksd", key=KEY, progress_bar=False)


def test_a_batch_or_data_set_of_one_is_refused():
    with pytest.raises(ValueError, match="at least 2 per batch; got 1"):
        un.fit(GAUSSIAN, _gaussian_draws(20, 8), "ksd", key=KEY, batch_size=1,
               progress_bar=False)
    with pytest.raises(ValueError, match="at least 2 per (data set|batch); got 1"):
        un.fit(GAUSSIAN, _gaussian_draws(1, 8), "ksd", key=KEY, progress_bar=False)


# ---- calibration of the standard errors ---------------------------------------------------------

@pytest.mark.slow
def test_confidence_intervals_cover_the_truth():
    reps, n = 200, 300
    upper = np.triu_indices(2)
    truth = np.concatenate([MU, PREC[upper]])
    estimates = np.zeros((reps, truth.size))
    stderrs = np.zeros((reps, truth.size))
    started = time.perf_counter()
    for rep in range(reps):
        fit = un.fit(GAUSSIAN, _gaussian_draws(n, 1000 + rep), "ksd", key=jax.random.key(rep),
                     progress_bar=False)
        estimates[rep] = np.concatenate([fit.params["mu"], fit.params["prec"][upper]])
        stderrs[rep] = np.concatenate([fit.stderr["mu"], fit.stderr["prec"][upper]])
    coverage = np.mean(np.abs(estimates - truth) <= 1.959964 * stderrs, axis=0)
    spread = estimates.std(axis=0) / stderrs.mean(axis=0)
    bias = (estimates.mean(axis=0) - truth) / estimates.std(axis=0)
    print(f"\n(mu0, mu1, prec00, prec01, prec11): coverage {coverage}, sd / mean SE {spread}, "
          f"bias / sd {bias}; {time.perf_counter() - started:.0f} s")
    # the sandwich describes the spread of θ̂: sd / mean SE near 1 (5% noise at 200 data sets)
    assert np.all((spread > 0.85) & (spread < 1.2)), spread
    # the mean's intervals are calibrated (binomial sd 1.5% at 200 data sets)
    assert np.all((coverage[:2] >= 0.92) & (coverage[:2] <= 0.98)), coverage
    # the precision's are not quite at n = 300: minimum-KSD estimates of a precision carry an
    # O(1/n) bias (bias / sd 0.55-0.73 here, 0.84-1.14 at n = 100, the same with a fixed
    # bandwidth), which Wald intervals ignore; the intervals cover 88-90% of the time
    assert np.all((coverage[2:] >= 0.84) & (coverage[2:] <= 0.98)), coverage
