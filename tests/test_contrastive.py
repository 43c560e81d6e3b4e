"""Chain-based estimators (MLE, CD, PCD) against exact MLEs and exact Fisher information."""

from __future__ import annotations

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _exact import exact_draws

import unnorm as un

N = 2000
COV = np.array([[1.0, 0.6], [0.6, 2.0]])
MU = np.array([1.0, -0.5])
# one model object for the Gaussian fits: a fit repeated on it compiles nothing
GAUSS2 = un.models.gaussian(2)
PCD = un.estimators.PCD(k=5, num_chains=64)


@pytest.fixture(scope="module")
def gaussian_data():
    x = np.random.default_rng(0).multivariate_normal(MU, COV, size=N)
    # the Gaussian MLE: the sample mean and the inverse of the 1/n covariance
    return x, x.mean(0), np.linalg.inv(np.cov(x.T, bias=True))


def _exact_fisher_se(model, n: int) -> dict:
    """sqrt(diag(F⁻¹)/n) with F = Cov_θ(∇_θE), by enumeration (a scalar-parameter model)."""
    configs = jnp.asarray(model.support.enumerate(), dtype=float)
    names = list(model.params)

    def energy(theta, x):
        return model.energy(dict(zip(names, theta, strict=True)), x)

    theta = jnp.array([float(model.params[k]) for k in names])
    grads = np.asarray(jax.vmap(jax.grad(energy), (None, 0))(theta, configs), dtype=float)
    energies = np.asarray(jax.vmap(energy, (None, 0))(theta, configs), dtype=float)
    p = np.exp(-(energies - energies.min()))
    p /= p.sum()
    centred = grads - p @ grads
    fisher = (centred * p[:, None]).T @ centred
    return dict(zip(names, np.sqrt(np.diag(np.linalg.inv(fisher)) / n), strict=True))


def _assert_near_truth(fit, truth: dict, bound: float = 4.0):
    for name, value in truth.items():
        z = (np.asarray(fit.params[name]) - np.asarray(value)) / np.asarray(fit.stderr[name])
        assert np.max(np.abs(z)) < bound, (fit.estimator, name, z)


def _pcd_fit(x):
    return un.fit(GAUSS2, x, PCD, key=jax.random.key(0), num_steps=2000, progress_bar=False)


@pytest.fixture(scope="module")
def pcd_fit(gaussian_data):
    return _pcd_fit(gaussian_data[0])


def test_pcd_tracks_the_gaussian_mle(gaussian_data, pcd_fit):
    x, mean, prec = gaussian_data
    fit = pcd_fit
    _assert_near_truth(fit, {"mu": MU, "prec": np.linalg.inv(COV)})
    # the averaged iterates sit on the exact MLE up to a fraction of its standard error
    # (what is left is the stochastic approximation's Monte Carlo error)
    _assert_near_truth(fit, {"mu": mean, "prec": prec}, bound=1.0)
    # the sandwich at θ̂ is the MLE's: sqrt(Σ_jj / n) for the mean
    np.testing.assert_allclose(fit.stderr["mu"], np.sqrt(np.diag(COV) / N), rtol=0.15)
    assert fit.method == "optimizer"
    assert "x" in fit.chains.posterior
    assert az.summary(fit.chains).shape[0] == 2
    # a right answer is reported as converged: its iterates stopped drifting
    assert fit.converged


def test_a_monte_carlo_fit_still_moving_is_not_converged(gaussian_data):
    # 800 steps from μ = 0 towards data centred near 7: the decaying step size slows the
    # iterates down halfway, where the likelihood's gradient in mu[0] is 11 of its Monte
    # Carlo errors
    fit = un.fit(GAUSS2, gaussian_data[0] + 6.0, PCD, key=jax.random.key(0), num_steps=800,
                 progress_bar=False)
    assert not fit.converged
    assert "NOT converged" in repr(fit)


def test_convergence_without_standard_errors_is_judged_by_the_fisher_information(
        gaussian_data, pcd_fit):
    # stderr=False leaves no sandwich to measure the drift by; the inverse Fisher information
    # from the fitted model's draws does, and the same draws give the likelihood's gradient at
    # the estimate. The same run as pcd_fit settles by both
    x = gaussian_data[0]
    settled = un.fit(GAUSS2, x, PCD, key=jax.random.key(0), num_steps=2000, stderr=False,
                     progress_bar=False)
    assert settled.stderr is None and settled.converged
    assert settled.params["mu"] == pytest.approx(pcd_fit.params["mu"])
    # the run of test_a_monte_carlo_fit_still_moving_is_not_converged (its compiled training
    # reused), without standard errors: 800 steps towards data centred near 7, the step size
    # decaying over the second half, slow the iterates down halfway, where the likelihood's
    # gradient in mu[0] is 11 of its Monte Carlo errors
    moving = un.fit(GAUSS2, x + 6.0, PCD, key=jax.random.key(0), num_steps=800, stderr=False,
                    progress_bar=False)
    assert not moving.converged
    assert "NOT converged" in repr(moving)


def test_the_trend_rule_calls_settled_iterates_settled_and_a_trend_a_trend():
    from unnorm.driver import _iterate_trend

    rng = np.random.default_rng(0)
    steps = np.arange(100.0, 2100.0, 100.0)
    # independent iterates: the family-wise rate of a false "still moving" is 1% by
    # construction (Bonferroni over 50 parameters); 400 runs give 4 expected, binomial
    # SD 2, so more than 12 is a failure of the rule, not chance
    alarms = 0
    for _ in range(400):
        iterates = rng.normal(size=(20, 50))
        ratio, critical = _iterate_trend(iterates[:10], iterates[10:], steps)
        alarms += ratio.max() > critical
    assert alarms <= 12
    # a steady drift of a third of the noise's SD per iterate, in one parameter of 50
    iterates = rng.normal(size=(20, 50))
    iterates[:, 7] += steps / 300.0
    ratio, critical = _iterate_trend(iterates[:10], iterates[10:], steps)
    assert np.argmax(ratio) == 7 and ratio[7] > critical
    # a parameter that never moved has not drifted; fewer than four iterates cannot be judged
    ratio, _ = _iterate_trend(np.zeros((3, 2)), np.zeros((3, 2)), steps[:6])
    assert np.all(ratio == 0.0)
    assert _iterate_trend(np.zeros((1, 2)), np.zeros((2, 2)), steps[:3]) is None


@pytest.mark.slow
def test_a_unit_never_on_is_reported_and_left_out_of_the_convergence_judgement():
    # unit 0 of a 3-unit Boltzmann machine is never on in the data: the likelihood increases
    # without bound as its bias and its two couplings decrease. The other three parameters
    # have the MLE of the 2-unit machine on units 1 and 2, in closed form from the four
    # configurations' frequencies
    rng = np.random.default_rng(5)
    pairs = rng.choice(4, size=N, p=[0.4, 0.2, 0.15, 0.25])
    x = np.stack([np.zeros(N), pairs % 2, pairs // 2], axis=1)
    freq = np.bincount(pairs, minlength=4) / N
    mle = {"b": np.log(freq[[1, 2]] / freq[0]),
           "W": np.log(freq[3] * freq[0] / (freq[1] * freq[2]))}
    model = un.models.boltzmann(np.zeros(3), np.zeros(3))
    with pytest.warns(RuntimeWarning, match=r"increases without bound as W\[0\], W\[1\], "
                      r"b\[0\] decrease") as caught:
        fit = un.fit(model, x, "pcd", key=jax.random.key(0), progress_bar=False)
    assert not any("singular" in str(w.message) for w in caught)
    assert np.all(np.isnan(fit.stderr["W"][:2])) and np.isnan(fit.stderr["b"][0])
    assert np.all(np.isfinite(fit.stderr["b"][1:])) and np.isfinite(fit.stderr["W"][2])
    assert fit.converged
    # the averaged iterates within a fraction of a standard error of the exact MLE, as in
    # the Gaussian fits
    z_b = (fit.params["b"][1:] - mle["b"]) / fit.stderr["b"][1:]
    z_w = (fit.params["W"][2] - mle["W"]) / fit.stderr["W"][2]
    assert np.max(np.abs(z_b)) < 1.0 and abs(z_w) < 1.0, (z_b, z_w)
    assert np.all(fit.params["b"][0] < -3.0)


def _ignores_c(params, x):
    # c does not enter the energy (its gradient is exactly 0): a module-level energy, so
    # that the model pickles by name
    return 0.5 * jnp.sum((x - params["mu"]) ** 2) + 0.0 * params["c"]


def test_a_parameter_the_energy_ignores_is_reported_flat_and_not_judged(gaussian_data):
    model = un.Model(_ignores_c, params={"mu": jnp.zeros(2), "c": 1.0},
                     support=un.supports.real(2))
    x = gaussian_data[0]
    with pytest.warns(RuntimeWarning, match=r"is flat in c: the data and every draw") as caught:
        fit = un.fit(model, x, PCD, key=jax.random.key(0), num_steps=1000, progress_bar=False)
    assert not any("without bound" in str(w.message) or "singular" in str(w.message)
                   for w in caught)
    assert fit.params["c"] == 1.0 and np.isnan(fit.stderr["c"])
    assert fit.converged
    # E is the unit-variance Gaussian's: the MLE of mu is the mean, and the sandwich of this
    # misspecified model gives it the data's standard error √(Σ_jj / n)
    z = (fit.params["mu"] - x.mean(axis=0)) / fit.stderr["mu"]
    assert np.max(np.abs(z)) < 1.0, z
    np.testing.assert_allclose(fit.stderr["mu"], np.sqrt(np.diag(COV) / N), rtol=0.15)


def test_pcd_with_a_replay_buffer_tracks_the_gaussian_mle(gaussian_data):
    # without restarts from noise the buffered chains are still a stochastic approximation of
    # the MLE: the same bounds as plain PCD
    x, mean, prec = gaussian_data
    fit = un.fit(GAUSS2, x,
                 un.estimators.PCD(k=5, num_chains=64, buffer_size=1000, reinit=0.0),
                 key=jax.random.key(0), num_steps=2000, progress_bar=False)
    _assert_near_truth(fit, {"mu": MU, "prec": np.linalg.inv(COV)})
    _assert_near_truth(fit, {"mu": mean, "prec": prec}, bound=1.0)


@pytest.mark.parametrize("reinit", [0.0, 1.0])
@pytest.mark.parametrize("model", [pytest.param(un.models.gaussian(2), marks=pytest.mark.slow),
                                   un.models.ising_chain(2)], ids=["mala", "gibbs"])
def test_replay_buffer_step_writes_the_chains_back_where_they_started(model, reinit):
    estimator = un.estimators.PCD(k=2, num_chains=8, buffer_size=50, reinit=reinit)
    objective = estimator.build(model, resample=True)
    state = objective.init(model.params, jax.random.key(0), jnp.zeros((4, 2)))
    assert state.buffer.shape == (50, 2)
    if model.support.is_discrete:
        assert set(np.unique(np.asarray(state.buffer))) <= {-1.0, 1.0}
    batch = un.estimators.Batch(jnp.zeros((4, 2)), jnp.arange(4))
    _, (new_state, aux) = objective.loss(model.params, state, batch, jax.random.key(1))
    before, after = np.asarray(state.buffer), np.asarray(new_state.buffer)
    changed = np.flatnonzero(np.any(before != after, axis=1))
    # MALA's state sits inside the step-size adaptation's; Gibbs has none
    chains = np.asarray(getattr(new_state.chains, "kernel", new_state.chains).position)
    # a rewritten entry may equal its old value by chance on two spins
    assert changed.size <= 8 and (changed.size >= 1 or model.support.is_discrete)
    # every rewritten entry holds the end of one of this step's chains
    for row in after[changed]:
        assert np.any(np.all(np.isclose(chains, row), axis=1))
    assert 0.0 < float(aux["acceptance_rate"]) <= 1.0


def test_mle_reaches_the_gaussian_mle(gaussian_data):
    x, mean, prec = gaussian_data
    fit = un.fit(GAUSS2, x, un.estimators.MLE(sampler="mala"),
                 key=jax.random.key(1), num_steps=1000, progress_bar=False)
    assert fit.method == "optimizer + Monte Carlo MLE"
    _assert_near_truth(fit, {"mu": MU, "prec": np.linalg.inv(COV)})
    assert fit.converged  # the Monte Carlo MLE's Newton steps reached its minimum
    # the Monte Carlo MLE with ≥ 5n draws: within 1.5 SE of the exact MLE (its Monte Carlo
    # error is about half the statistical one and is part of the reported SE)
    _assert_near_truth(fit, {"mu": mean, "prec": prec}, bound=1.5)
    mle_se = np.sqrt(np.diag(COV) / N)
    assert np.all(fit.stderr["mu"] > 0.9 * mle_se)
    assert np.all(fit.stderr["mu"] < 1.5 * mle_se)


def test_mle_on_spins_against_exact_fisher_information():
    truth = un.models.ising_chain(8, coupling=0.5, field=0.2)
    data = exact_draws(truth, N, seed=3)
    fit = un.fit(un.models.ising_chain(8, coupling=0.0), data, "mle", key=jax.random.key(2),
                 num_steps=500, progress_bar=False)
    _assert_near_truth(fit, {"coupling": 0.5, "field": 0.2})
    exact = _exact_fisher_se(truth, N)
    for name in ("coupling", "field"):
        # the reported SE also carries the Monte Carlo share (≤ ~25 % of the variance)
        assert 0.85 * exact[name] < fit.stderr[name] < 1.4 * exact[name], (name, exact)


def test_cd_with_gibbs_on_spins():
    truth = un.models.ising_chain(8, coupling=0.5, field=0.2)
    data = exact_draws(truth, N, seed=4)
    fit = un.fit(un.models.ising_chain(8, coupling=0.0), data, un.estimators.CD(k=1),
                 key=jax.random.key(3), num_steps=1000, batch_size=256, progress_bar=False)
    _assert_near_truth(fit, {"coupling": 0.5, "field": 0.2})
    assert fit.chains is not None


def test_chain_estimators_same_key_same_fit(gaussian_data, pcd_fit):
    # the PCD fit again, with the same key: its compiled programs are reused
    again = _pcd_fit(gaussian_data[0])
    for name in ("mu", "prec"):
        np.testing.assert_array_equal(again.params[name], pcd_fit.params[name])
        np.testing.assert_array_equal(again.stderr[name], pcd_fit.stderr[name])
    np.testing.assert_array_equal(np.asarray(again.chains.posterior["x"]),
                                  np.asarray(pcd_fit.chains.posterior["x"]))


@pytest.mark.parametrize(
    ("estimator", "model", "error", "match"),
    [
        (lambda: un.estimators.PCD(sampler="nuts"), un.models.ising_chain(4), ValueError,
         "sampler 'nuts' does not apply"),
        (lambda: un.estimators.CD(sampler="gibbs"), un.models.gaussian(2), ValueError,
         "sampler 'gibbs' does not apply"),
        (lambda: un.estimators.MLE(sampler="slice"), un.models.gaussian(2), ValueError,
         "unknown sampler 'slice'"),
        (lambda: un.estimators.MLE(chain_sampler="gibbs"), un.models.gaussian(2), ValueError,
         "estimator 'mle', chain_sampler: sampler 'gibbs' does not apply"),
        (lambda: un.estimators.CD(step_size=0.1), un.models.ising_chain(4), ValueError,
         "step_size does not apply"),
        (lambda: un.estimators.PCD(step_size=-1.0), un.models.gaussian(2), ValueError,
         "step_size must be"),
    ],
)
def test_chain_estimators_reject_bad_samplers(estimator, model, error, match):
    data = np.ones((10, *model.support.event_shape))
    with pytest.raises(error, match=match):
        un.fit(model, data, estimator(), key=jax.random.key(0), progress_bar=False)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: un.estimators.CD(k=0), "k must be"),
        (lambda: un.estimators.PCD(num_chains=0), "num_chains must be"),
        (lambda: un.estimators.PCD(num_chains=64, buffer_size=10), "buffer_size must be >= 64"),
        (lambda: un.estimators.PCD(buffer_size=100, reinit=1.5), "reinit must be a probability"),
        (lambda: un.estimators.MLE(num_samples=5), "num_samples must be"),
        (lambda: un.estimators.MLE(max_rounds=0), "max_rounds must be"),
        (lambda: un.estimators.MLE(num_warmup=-1), "num_warmup must be"),
    ],
)
def test_chain_estimators_reject_bad_options(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_gradient_moments_over_blocks_equal_the_moments_of_all_points(monkeypatch):
    # blocks of 16 points (the fewest a block holds) for 5 coordinates, over 37 points: two
    # full blocks and a padded one, combined on the host; against NumPy on every point's
    # gradient of the Gaussian's energy in its unconstrained coordinates
    from jax.flatten_util import ravel_pytree

    from unnorm.estimators import boundary

    monkeypatch.setattr(boundary, "MOMENTS_BLOCK_ENTRIES", 16 * 5)
    model = un.models.gaussian(2)
    params = {"mu": np.array([0.3, -0.2]), "prec": np.array([[1.5, 0.4], [0.4, 0.8]])}
    points = np.random.default_rng(3).normal(size=(37, 2)).astype(np.float32)
    assert boundary.moments_block(5) == 16
    moments = boundary.gradient_moments(model, params, points, matrix=True, num_batches=4)

    u = model.to_unconstrained(model.params | {k: jnp.asarray(v) for k, v in params.items()})
    flat, unravel = ravel_pytree(u)
    grads = np.asarray(jax.vmap(jax.grad(
        lambda f, x: model.energy(model.to_constrained(unravel(f)), x)), (None, 0))(
        flat, points), dtype=float)
    np.testing.assert_allclose(moments.mean, grads.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moments.variance, grads.var(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(moments.covariance, np.cov(grads, rowvar=False, ddof=0),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(moments.low, grads.min(axis=0))
    np.testing.assert_array_equal(moments.high, grads.max(axis=0))
    batch_means = [part.mean(axis=0) for part in np.array_split(grads, 4)]
    np.testing.assert_allclose(moments.batch_means, batch_means, rtol=1e-5, atol=1e-6)
