"""Noise-contrastive estimation: θ and log Z against known truths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from _exact import exact_draws

import unnorm as un

N = 2000
# one model object per dimension: fits of the same model, estimator and data shape share their
# compiled programs
GAUSS1 = un.models.gaussian(1)
GAUSS2 = un.models.gaussian(2)


def _gaussian_log_z(prec) -> float:
    d = prec.shape[0]
    return 0.5 * d * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(prec)[1]


# four noise draws per observation (ν = 4) with the long studies (-m slow)
@pytest.mark.parametrize("nu", [1.0, pytest.param(4.0, marks=pytest.mark.slow)])
def test_nce_recovers_gaussian_and_its_log_partition(nu):
    cov = np.array([[1.0, 0.6], [0.6, 2.0]])
    mu = np.array([1.0, -0.5])
    prec = np.linalg.inv(cov)
    x = np.random.default_rng(3).multivariate_normal(mu, cov, size=N)
    fit = un.fit(GAUSS2, x, un.estimators.NCE(nu=nu), key=jax.random.key(0),
                 progress_bar=False)
    assert fit.converged
    for name, truth in (("mu", mu), ("prec", prec)):
        z = (fit.params[name] - truth) / fit.stderr[name]
        assert np.max(np.abs(z)) < 4, (name, z)
    z_log_z = (fit.nuisance["log_z"] - _gaussian_log_z(prec)) / fit.nuisance_stderr["log_z"]
    assert abs(z_log_z) < 4
    # NCE is less efficient than the MLE, and more so with less noise (Gutmann & Hyvärinen 2012,
    # fig. 4): its standard errors sit above the MLE's sqrt(Σ_jj / n)
    mle_se = np.sqrt(np.diag(cov) / N)
    assert np.all(fit.stderr["mu"] > 0.95 * mle_se)
    assert np.all(fit.stderr["mu"] < (3.0 if nu == 1.0 else 1.6) * mle_se)


def test_nce_on_spins_learns_log_z_against_enumeration():
    truth = un.models.ising_chain(8, coupling=0.5, field=0.2)
    data = exact_draws(truth, N, seed=5)
    fit = un.fit(un.models.ising_chain(8, coupling=0.0), data, un.estimators.NCE(nu=4),
                 key=jax.random.key(1), progress_bar=False)
    for name in ("coupling", "field"):
        z = (fit.params[name] - float(truth.params[name])) / fit.stderr[name]
        assert abs(z) < 4, (name, z)
    exact = un.log_partition(truth).estimate
    assert abs(fit.nuisance["log_z"] - exact) / fit.nuisance_stderr["log_z"] < 4


def test_nce_with_a_user_noise_distribution():
    x = np.random.default_rng(4).normal(0.5, 1.5, size=(N, 2))
    noise = dist.Normal(jnp.zeros(2), 3.0).to_event(1)
    fit = un.fit(GAUSS2, x, un.estimators.NCE(noise=noise, nu=2),
                 key=jax.random.key(2), progress_bar=False)
    z = (fit.params["mu"] - 0.5) / fit.stderr["mu"]
    assert np.max(np.abs(z)) < 4
    z = (np.diag(fit.params["prec"]) - 1 / 1.5**2) / np.diag(fit.stderr["prec"])
    assert np.max(np.abs(z)) < 4


def test_nce_same_key_same_fit(standard_normal_fit):
    # a second fit of the shared configuration (seed 11) reuses its compiled programs
    again = _standard_normal_nce(seed=11)
    np.testing.assert_array_equal(again.params["mu"], standard_normal_fit.params["mu"])
    assert again.nuisance["log_z"] == standard_normal_fit.nuisance["log_z"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"nu": 0.0}, ValueError, "nu must be"),
        ({"nu": -1.0}, ValueError, "nu must be"),
        ({"num_noise": 0}, ValueError, "num_noise must be"),
    ],
)
def test_nce_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        un.estimators.NCE(**kwargs)


def test_nce_rejects_bad_noise():
    x = np.zeros((10, 2))
    with pytest.raises(TypeError, match="noise must be a numpyro"):
        un.fit(un.models.gaussian(2), x, un.estimators.NCE(noise="normal"),
               key=jax.random.key(0), progress_bar=False)
    with pytest.raises(ValueError, match=r"noise draws have shape \(3,\)"):
        un.fit(un.models.gaussian(2), x,
               un.estimators.NCE(noise=dist.Normal(jnp.zeros(3), 1.0).to_event(1)),
               key=jax.random.key(0), progress_bar=False)


def _standard_normal_nce(seed: int, n: int = N, dim: int = 2, nu: float = 4.0):
    # by default the model, data shape and options of test_nce_recovers_gaussian_and_its_log_
    # partition[4.0], whose compiled programs these fits reuse
    x = np.random.default_rng(seed).normal(size=(n, dim))
    return un.fit({1: GAUSS1, 2: GAUSS2}[dim], x, un.estimators.NCE(nu=nu),
                  key=jax.random.key(seed), progress_bar=False)


@pytest.fixture(scope="module")
def standard_normal_fit():
    return _standard_normal_nce(seed=11)


def test_nce_precision_and_log_z_standard_errors_on_a_standard_normal(standard_normal_fit):
    # with the noise fitted to the data, noise and data distributions coincide asymptotically,
    # and NCE's variance is (1 + 1/ν) times the MLE's (Gutmann & Hyvärinen 2012, the case of
    # noise equal to the data distribution):
    # the MLE's of a diagonal entry of a unit precision is 2/n
    n, nu = N, 4.0
    fit = standard_normal_fit
    expected = np.sqrt((1 + 1 / nu) * 2 / n)
    assert fit.stderr["prec"][0, 0] == pytest.approx(expected, rel=0.2)
    z = (fit.nuisance["log_z"] - _gaussian_log_z(np.eye(2))) / fit.nuisance_stderr["log_z"]
    assert abs(z) < 4
    assert fit.summary().loc["log_z", "std_err"] == pytest.approx(
        float(fit.nuisance_stderr["log_z"]))


@pytest.mark.slow
def test_nce_log_z_standard_error_matches_its_monte_carlo_spread():
    # 200 data sets: the Monte Carlo SD of log Ẑ has a relative standard error of 1/√400 = 5%,
    # well inside the 25% window
    fits = [_standard_normal_nce(seed, n=4000, dim=1) for seed in range(200)]
    estimates = np.array([float(f.nuisance["log_z"]) for f in fits])
    ses = np.array([float(f.nuisance_stderr["log_z"]) for f in fits])
    assert np.mean(ses) == pytest.approx(np.std(estimates, ddof=1), rel=0.25)
    # and the estimates centre on the truth, within 4 standard errors of their mean
    truth = 0.5 * np.log(2 * np.pi)
    assert abs(np.mean(estimates) - truth) < 4 * np.std(estimates, ddof=1) / np.sqrt(200)


@pytest.mark.parametrize("dim", [1, 4])
def test_default_noise_density_is_numpyros_gaussian(dim):
    # the whitening matrix computed once per fit gives each row's density as NumPyro's
    # MultivariateNormal does, by a product instead of a triangular solve per row
    from unnorm.estimators import nce

    mixing = np.tril(np.ones((dim, dim)))
    # cast on the host: jnp.asarray(..., dtype=jnp.float32) compiles a conversion program
    x = np.asarray(np.random.default_rng(dim).normal(size=(300, dim)) @ mixing.T + 2.0,
                   dtype=np.float32)

    # traced as a fit traces the noise (inside jit): one program to compile, not dozens of
    # eager operations. The references skip NumPyro's argument checks, which cannot see traced
    # values and would compile their constant parts operation by operation
    @jax.jit
    def densities(x):
        noise = nce._fit_noise(un.supports.real(dim), x)
        reference = dist.MultivariateNormal(noise.loc, scale_tril=noise.scale_tril,
                                            validate_args=False).log_prob(x)
        widened = nce._widened(nce.NCEState(jax.random.key(0), noise), 3.0).noise_params
        widened_reference = dist.MultivariateNormal(
            noise.loc, scale_tril=3.0 * noise.scale_tril, validate_args=False).log_prob(x)
        # and its draws are NumPyro's for the same key, without building the distribution
        key = jax.random.key(dim)
        draws = dist.MultivariateNormal(noise.loc, scale_tril=noise.scale_tril,
                                        validate_args=False).sample(key, (7,))
        return ((jax.vmap(noise.log_prob)(x), reference),
                (jax.vmap(widened.log_prob)(x), widened_reference),
                (noise.sample(key, 7), draws))

    for mine, reference in densities(x):
        np.testing.assert_allclose(mine, reference, rtol=2e-6)
