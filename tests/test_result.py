"""FitResult: intervals that respect the constraints, the nuisance rows, saving and loading."""

from __future__ import annotations

from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import unnorm as un
from unnorm import constraints, intervals

KEY = jax.random.key(0)
Z95 = NormalDist().inv_cdf(0.975)


@pytest.fixture(scope="module")
def small_gaussian_fit():
    # n = 8: the precision's Wald interval reaches below 0, which a precision cannot
    x = np.random.default_rng(3).normal(0.0, 0.5, size=(8, 1))
    return un.fit(un.models.gaussian(1), x, "sm", key=KEY, progress_bar=False)


def test_transformed_interval_stays_in_the_parameter_space(small_gaussian_fit):
    fit = small_gaussian_fit
    wald_lower, _ = fit.conf_int(0.99, kind="wald")["prec"]
    lower, upper = fit.conf_int(0.99)["prec"]
    assert wald_lower[0, 0] < 0 < lower[0, 0] < fit.params["prec"][0, 0] < upper[0, 0]
    table = fit.summary(0.99)
    assert table.loc["prec[0,0]", "ci_lower"] == pytest.approx(lower[0, 0])


def test_positive_interval_is_the_mapped_normal_interval(small_gaussian_fit):
    # a positive-definite 1×1 matrix: its one entry is exp-like in one unconstrained scalar,
    # so the interval must be g(û ± z·se_u) with se_u = se / g'(û), the delta method inverted
    fit = small_gaussian_fit
    lower, upper = fit.conf_int(0.95)["prec"]
    estimate, se = fit.params["prec"][0, 0], fit.stderr["prec"][0, 0]
    # NumPyro's positive-definite bijection on 1×1 is θ = exp(u)², so log θ = 2u and the
    # interval is θ̂·exp(±z·se/θ̂) exactly (se_u = se / (2θ̂)); the simulated quantiles carry
    # a Monte Carlo error of about 0.02 standard errors of log θ
    expected = estimate * np.exp(np.array([-Z95, Z95]) * se / estimate)
    np.testing.assert_allclose([lower[0, 0], upper[0, 0]], expected, rtol=0.03)


def test_unconstrained_parameters_keep_the_wald_interval(small_gaussian_fit):
    fit = small_gaussian_fit
    lower, upper = fit.conf_int(0.9)["mu"]
    wald = fit.conf_int(0.9, kind="wald")["mu"]
    np.testing.assert_allclose(lower, wald[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(upper, wald[1], rtol=1e-6, atol=1e-9)


def test_interval_constraint_and_positive_scalar_are_exact():
    def energy(params, x):
        # x ~ N(0, σ²) with correlation-like weight ρ ∈ (0, 1) on a second coordinate
        return (0.5 * x[0] ** 2 / params["sigma"] ** 2 + jnp.log(params["sigma"])
                + 0.5 * (x[1] - params["rho"]) ** 2)

    model = un.Model(energy, params={"sigma": 1.0, "rho": 0.5},
                     constraints={"sigma": constraints.positive,
                                  "rho": constraints.interval(0.0, 1.0)},
                     support=un.supports.real(2))
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(0.0, 0.7, 40), rng.normal(0.97, 1.0, 40)])
    fit = un.fit(model, x, "sm", key=KEY, progress_bar=False)
    lower, upper = fit.conf_int(0.95)["rho"]
    assert 0.0 < lower < upper < 1.0
    # exact for elementwise constraints: log σ's interval is symmetric about log σ̂, up to
    # the linear interpolation between grid scores 0.05 apart (relative error below 1e-4)
    lo, hi = fit.conf_int(0.95)["sigma"]
    assert np.log(fit.params["sigma"]) - np.log(lo) == pytest.approx(
        np.log(hi) - np.log(fit.params["sigma"]), rel=1e-3)


def test_nce_log_z_has_a_row_and_an_interval():
    x = np.random.default_rng(0).normal(size=(1000, 1))
    # one model object for the fit and un.compare: compare's NCE fit reuses the compiled code
    model = un.models.gaussian(1)
    fit = un.fit(model, x, un.estimators.NCE(nu=4), key=KEY, progress_bar=False)
    table = fit.summary()
    assert list(table.index) == ["mu[0]", "prec[0,0]", "log_z"]
    assert table.loc["log_z", "std_err"] == pytest.approx(float(fit.nuisance_stderr["log_z"]))
    lower, upper = fit.conf_int()["log_z"]
    np.testing.assert_allclose(upper - lower, 2 * Z95 * fit.nuisance_stderr["log_z"],
                               rtol=1e-6)
    frame = fit.to_dataframe()
    assert list(frame.columns[:7]) == ["estimator", "parameter", "estimate", "std_err",
                                       "ci_lower", "ci_upper", "time_s"]
    assert list(frame["parameter"]) == ["mu[0]", "prec[0,0]", "log_z"]
    table = un.compare(model, x, ["sm", un.estimators.NCE(nu=4)], key=KEY,
                       truth={"mu": np.zeros(1), "prec": np.eye(1)}, progress_bar=False)
    nce = table[table["estimator"] == "nce"].set_index("parameter")
    assert np.isnan(nce.loc["log_z", "error"]) and np.isfinite(nce.loc["mu[0]", "error"])


def test_save_and_load_round_trip(tmp_path, small_gaussian_fit):
    fit = small_gaussian_fit
    path = tmp_path / "fit.json"
    fit.save(path)
    assert path.is_file() and (tmp_path / "fit.npz").is_file()
    loaded = un.load_fit(path)
    pd.testing.assert_frame_equal(loaded.summary(), fit.summary())
    pd.testing.assert_frame_equal(loaded.summary(0.8, kind="wald"),
                                  fit.summary(0.8, kind="wald"))
    np.testing.assert_array_equal(loaded.loss, fit.loss)
    np.testing.assert_array_equal(loaded.covariance, fit.covariance)
    assert (loaded.estimator, loaded.method, loaded.stages, loaded.converged) == (
        fit.estimator, fit.method, fit.stages, fit.converged)


def test_save_and_load_a_chain_based_fit(tmp_path):
    truth = un.models.ising_chain(4, coupling=0.3)
    data = np.asarray(truth.support.enumerate())[np.random.default_rng(0).integers(0, 16, 300)]
    fit = un.fit(un.models.ising_chain(4, coupling=0.0), data,
                 un.estimators.CD(k=1), key=KEY, num_steps=50, batch_size=50,
                 progress_bar=False)
    fit.save(tmp_path / "cd.json")
    loaded = un.load_fit(tmp_path / "cd.json")
    np.testing.assert_array_equal(np.asarray(loaded.to_inference_data().posterior["x"]),
                                  np.asarray(fit.chains.posterior["x"]))
    assert loaded.options == {"k": 1, "sampler": None, "step_size": None}


def test_fits_without_chains_have_no_inference_data(small_gaussian_fit):
    with pytest.raises(ValueError, match="estimator 'sm' ran no MCMC chains"):
        small_gaussian_fit.to_inference_data()


def test_load_fit_refuses_what_is_not_a_saved_fit(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        un.load_fit(tmp_path / "missing.json")
    other = tmp_path / "other.json"
    other.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="is not a saved fit"):
        un.load_fit(other)
    other.write_text("not json")
    with pytest.raises(ValueError, match="not JSON"):
        un.load_fit(other)


def test_interval_kind_is_checked(small_gaussian_fit):
    with pytest.raises(ValueError, match="unknown kind 'exact'"):
        small_gaussian_fit.conf_int(kind="exact")


def test_endpoint_grid_simulates_coupled_constraints():
    # a 2×2 positive-definite matrix couples its entries: the diagonal's simulated lower end
    # stays positive even with a huge unconstrained spread
    transform = lambda u: {"p": jnp.stack([jnp.exp(u["p"][:1]), jnp.exp(u["p"][1:])])}  # noqa
    grid = intervals.endpoint_grid(transform, {"p": jnp.zeros(2)}, np.eye(2) * 4.0,
                                   np.array([False, False]))
    lower, upper = intervals.interval_from_grid(grid, 0.95)
    assert np.all(lower > 0)
    # the simulated quantiles of exp(N(0, 4)) at 2.5% and 97.5%
    np.testing.assert_allclose(lower, np.exp(-2 * Z95), rtol=0.05)
    np.testing.assert_allclose(upper, np.exp(2 * Z95), rtol=0.05)
