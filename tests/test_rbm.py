"""RBMs (Beigy's lecture slides): free energies against the joint energy summed over the hidden
units, exact normalizing constants, and draws against exact moments."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _exact import exact_draws
from scipy.special import logsumexp
from test_samplers_statistical import assert_mcse_z

import unnorm as un

RNG = np.random.default_rng(7)
W6 = RNG.normal(scale=0.8, size=(6, 3))
B6 = RNG.normal(scale=0.5, size=6)
C6 = RNG.normal(scale=0.5, size=3)


def _hidden(num_hidden: int) -> np.ndarray:
    return np.array(list(itertools.product((0.0, 1.0), repeat=num_hidden)))


def _energies(model: un.Model, xs) -> np.ndarray:
    # one compiled program, not each of the energy's operations compiled on its own
    return np.asarray(jax.jit(jax.vmap(lambda x: model.energy(model.params, x)))(
        jnp.asarray(xs)), dtype=float)


def _bernoulli_joint_neg_energy(v, h, W, b, c):
    # -E(v, h) = vᵀWh + bᵀv + cᵀh (Beigy's lecture slides), for every pair of rows of v and h
    return v @ W @ h.T + (v @ b)[:, None] + (h @ c)[None, :]


def test_rbm_free_energy_sums_the_hidden_units_out():
    model = un.models.rbm(6, 3, W=W6, b=B6, c=C6)
    v = np.asarray(model.support.enumerate())
    exact = -logsumexp(_bernoulli_joint_neg_energy(v, _hidden(3), W6, B6, C6), axis=1)
    ours = _energies(model, v)
    np.testing.assert_allclose(ours, exact, rtol=1e-5, atol=1e-5)


def test_rbm_exact_log_partition_is_the_joint_sum():
    model = un.models.rbm(6, 3, W=W6, b=B6, c=C6)
    v = np.asarray(model.support.enumerate())
    joint = logsumexp(_bernoulli_joint_neg_energy(v, _hidden(3), W6, B6, C6))
    lz = un.log_partition(model, method="exact")
    assert lz.stderr == 0.0
    assert abs(lz.estimate - joint) < 1e-4 * abs(joint)   # float32 sums of 64 terms


def test_rbm_gibbs_matches_exact_moments():
    model = un.models.rbm(6, 3, W=W6, b=B6, c=C6)
    v = np.asarray(model.support.enumerate())
    log_p = -_energies(model, v)
    p = np.exp(log_p - logsumexp(log_p))
    idata = un.sample(model, key=jax.random.key(3), sampler="gibbs", num_chains=4,
                      num_warmup=1000, num_samples=3000, progress_bar=False, warn=False)
    x = np.asarray(idata.posterior["x"], dtype=float)
    checks = {f"E[v{i}]": (x[..., i], float(p @ v[:, i])) for i in range(6)}
    for i, j in itertools.combinations(range(6), 2):
        checks[f"E[v{i} v{j}]"] = (x[..., i] * x[..., j], float(p @ (v[:, i] * v[:, j])))
    assert_mcse_z(checks)


def test_gaussian_rbm_free_energy_integrates_to_the_mixture_constant():
    # D = 1: the free energy integrated on a fine grid against the closed-form log Z.
    W, b, c, sigma = np.array([[1.2, -0.7]]), np.array([0.3]), np.array([0.2, -0.4]), 0.8
    model = un.models.gaussian_rbm(1, 2, W=W, b=b, c=c, sigma=sigma)
    grid = np.linspace(-12.0, 12.0, 24001)
    energies = _energies(model, grid[:, None])
    numeric = logsumexp(-energies) + np.log(grid[1] - grid[0])
    _, _, _, log_z = un.models.gaussian_rbm_mixture(model.params, sigma=sigma)
    assert abs(numeric - log_z) < 1e-4


def test_gaussian_rbm_free_energy_sums_the_hidden_units_out():
    rng = np.random.default_rng(1)
    W, b, c = rng.normal(size=(3, 2)), rng.normal(size=3), rng.normal(size=2)
    sigma = np.array([0.5, 1.0, 2.0])
    model = un.models.gaussian_rbm(3, 2, W=W, b=b, c=c, sigma=sigma)
    v = rng.normal(size=(5, 3))
    h = _hidden(2)
    # the Gaussian-Bernoulli energy of Beigy's lecture slides, for every (v, h)
    joint = (np.sum((v - b) ** 2 / (2 * sigma ** 2), axis=1)[:, None]
             - (v / sigma) @ W @ h.T - (h @ c)[None, :])
    exact = -logsumexp(-joint, axis=1)
    ours = _energies(model, v)
    np.testing.assert_allclose(ours, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_gaussian_rbm_nuts_matches_the_mixture_moments():
    W = np.array([[1.5, 0.0], [0.8, -1.2]])
    b, c, sigma = np.array([0.0, 0.5]), np.array([-0.5, 0.3]), np.array([1.0, 0.7])
    model = un.models.gaussian_rbm(2, 2, W=W, b=b, c=c, sigma=sigma)
    log_w, means, scale, _ = un.models.gaussian_rbm_mixture(model.params, sigma=sigma)
    w = np.exp(log_w)
    mean = w @ means
    second = np.einsum("k,ki,kj->ij", w, means, means) + np.diag(scale ** 2)   # E[v vᵀ]
    idata = un.sample(model, key=jax.random.key(4), sampler="nuts", num_chains=4,
                      num_warmup=1000, num_samples=2000, progress_bar=False, warn=False)
    x = np.asarray(idata.posterior["x"], dtype=float)
    checks = {f"E[v{i}]": (x[..., i], float(mean[i])) for i in range(2)}
    for i, j in [(0, 0), (1, 1), (0, 1)]:
        checks[f"E[v{i} v{j}]"] = (x[..., i] * x[..., j], float(second[i, j]))
    assert_mcse_z(checks)


def test_rbm_defaults_break_the_hidden_symmetry_and_are_seeded():
    first, again = un.models.rbm(4, 3, seed=5), un.models.rbm(4, 3, seed=5)
    np.testing.assert_array_equal(first.params["W"], again.params["W"])
    W = np.asarray(first.params["W"])
    assert len({tuple(column) for column in W.T.round(6)}) == 3     # distinct hidden units
    assert not np.array_equal(W, np.asarray(un.models.rbm(4, 3, seed=6).params["W"]))
    np.testing.assert_array_equal(first.params["b"], np.zeros(4))


@pytest.mark.parametrize("call,error,match", [
    (lambda: un.models.rbm(0, 2), ValueError, "num_visible must be >= 1; got 0"),
    (lambda: un.models.rbm(3, 2.5), TypeError, "num_hidden must be an integer >= 1; got 2.5"),
    (lambda: un.models.rbm(3, 2, W=np.zeros((2, 3))), ValueError, r"W must have shape \(3, 2\)"),
    (lambda: un.models.gaussian_rbm(3, 2, c=np.zeros(3)), ValueError,
     r"c must have shape \(2,\)"),
    (lambda: un.models.gaussian_rbm(2, 1, sigma=[1.0, 0.0]), ValueError,
     "sigma must be positive"),
    (lambda: un.models.gaussian_rbm_mixture(un.models.gaussian_rbm(2, 17).params), ValueError,
     "num_hidden must be at most max_hidden = 16"),
])
def test_rbm_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- fitting: the fitted density against the truth's, through the exact log-likelihood ----------
# n = 4000 draws; a consistent estimator's average log-likelihood on its own data is within
# O(k / n) ≈ 0.002 nats of the truth's (k = 8 or 20 parameters): 0.02 leaves ten times that.
LOG_LIK_TOLERANCE = 0.02


def _gaussian_rbm_log_lik(params, data) -> float:
    log_w, means, scale, _ = un.models.gaussian_rbm_mixture(params)
    z = (data[:, None, :] - means[None]) / scale
    per_component = log_w[None] - 0.5 * np.sum(z ** 2, axis=-1) - np.sum(
        np.log(np.sqrt(2 * np.pi) * scale))
    return float(np.mean(logsumexp(per_component, axis=1)))


def test_gaussian_rbm_ssm_fit_recovers_the_density():
    W, b, c = np.array([[2.0, 0.0], [1.0, -1.5]]), np.array([0.0, 0.5]), np.array([-0.5, 0.3])
    truth = un.models.gaussian_rbm(2, 2, W=W, b=b, c=c)
    log_w, means, scale, _ = un.models.gaussian_rbm_mixture(truth.params)
    rng = np.random.default_rng(0)
    data = means[rng.choice(len(log_w), size=4000, p=np.exp(log_w))] + scale * rng.normal(
        size=(4000, 2))
    start = un.models.gaussian_rbm(2, 2, seed=1)
    fit = un.fit(start, data, "ssm", key=jax.random.key(0), progress_bar=False)
    true_ll = _gaussian_rbm_log_lik(truth.params, data)
    assert _gaussian_rbm_log_lik(start.params, data) < true_ll - 1.0    # a real distance to go
    assert abs(_gaussian_rbm_log_lik(fit.params, data) - true_ll) < LOG_LIK_TOLERANCE


@pytest.mark.slow
def test_rbm_nce_fit_recovers_the_density():
    rng = np.random.default_rng(7)
    truth = un.models.rbm(6, 2, W=rng.normal(scale=1.5, size=(6, 2)),
                          b=rng.normal(scale=0.5, size=6), c=rng.normal(scale=0.5, size=2))
    data = exact_draws(truth, 4000, seed=1)
    start = un.models.rbm(6, 2, seed=3)

    # one program for the energies at every params
    data_energies = jax.jit(jax.vmap(start.energy, (None, 0)))

    def log_lik(params) -> float:
        energies = data_energies(params, jnp.asarray(data))
        return float(-np.mean(energies) - un.log_partition(start, params).estimate)

    fit = un.fit(start, data, "nce", key=jax.random.key(0), progress_bar=False)
    true_ll = log_lik(truth.params)
    assert log_lik(start.params) < true_ll - 0.5
    assert abs(log_lik(fit.params) - true_ll) < LOG_LIK_TOLERANCE
