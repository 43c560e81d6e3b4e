"""The fit driver: bad input, stopping, non-finite steps, reproducibility, FitResult."""

from __future__ import annotations

import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

import unnorm as un
from unnorm.trust_region import trust_region_newton

KEY = jax.random.key(0)


def _scale_energy(params, x):
    return 0.5 * params["prec"] * jnp.sum(x**2)


SCALE = un.Model(_scale_energy, params={"prec": 1.0},
                 constraints={"prec": un.constraints.positive}, support=un.supports.real(2))
SCALE_DATA = np.random.default_rng(0).normal(scale=0.5, size=(400, 2))
OPTIMIZER = optax.adam(0.05)


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"estimator": "nope"}, ValueError, r"unknown estimator 'nope'; choose one of 'sm', 'dsm'"),
    ({"estimator": 3}, TypeError, "estimator must be a name"),
    ({"estimator": un.estimators.DSM(sigma=0.0)}, ValueError, r"sigma must be a finite number > 0"),
    ({"estimator": un.estimators.DSM(sigma=-1.0)}, ValueError, r"sigma must be .*> 0; got -1.0"),
    ({"estimator": un.estimators.DSM(sigma=[0.1, -2.0])}, ValueError, r"sigma\[1\] must be"),
    ({"estimator": un.estimators.DSM(sigma=[])}, ValueError, "non-empty list"),
    ({"estimator": un.estimators.SSM(num_projections=0)}, ValueError,
     "num_projections must be >= 1; got 0"),
    ({"estimator": un.estimators.SSM(projection="uniform")}, ValueError,
     "unknown projection 'uniform'"),
    ({"estimator": un.estimators.SM(truncation=-1.0)}, ValueError, "truncation must be"),
    ({"batch_size": 401}, ValueError, r"batch_size must be at most .* n = 400; got 401"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1; got 0"),
    ({"optimizer": "adam"}, TypeError, "optimizer must be an optax GradientTransformation"),
    ({"optimizer": optax.adam}, TypeError, "optimizer must be an optax GradientTransformation"),
    ({"num_steps": 0}, ValueError, "num_steps must be >= 1"),
    ({"stderr": "yes"}, ValueError, "stderr must be True, False or 'auto'"),
    ({"key": 0}, TypeError, "key must be a JAX PRNG key"),
    ({"method": "lbfgs"}, ValueError, "unknown method 'lbfgs'"),
    ({"init": {"prec": -1.0}}, ValueError, r"init\['prec'\] violates its constraint"),
    ({"tol": 0.0}, ValueError, "tol must be a finite number > 0"),
])
def test_bad_arguments(kwargs, error, match):
    call = {"estimator": "sm", "key": KEY, "progress_bar": False} | kwargs
    with pytest.raises(error, match=match):
        un.fit(SCALE, SCALE_DATA, **call)


def test_bad_data():
    bad = SCALE_DATA.copy()
    bad[17, 1] = np.nan
    with pytest.raises(ValueError, match=r"data contains 1 NaN .*first at row 17"):
        un.fit(SCALE, bad, "sm", key=KEY)
    bad[17, 1] = np.inf
    with pytest.raises(ValueError, match=r"first at row 17"):
        un.fit(SCALE, bad, "ssm", key=KEY)
    with pytest.raises(ValueError, match=r"data has shape \(400, 3\).*needs shape \(n, 2\)"):
        un.fit(SCALE, np.zeros((400, 3)), "sm", key=KEY)
    with pytest.raises(TypeError, match="model must be an unnorm.Model"):
        un.fit(_scale_energy, SCALE_DATA, "sm", key=KEY)


@pytest.mark.parametrize("name", ["sm", "dsm", "ssm"])
def test_score_matching_on_discrete_data_points_to_pseudo_likelihood(name):
    model = un.models.ising_chain(4)
    data = np.ones((10, 4))
    with pytest.raises(ValueError, match=rf"estimator '{name}' needs a continuous support.*'pl'"):
        un.fit(model, data, name, key=KEY)


def test_dsm_on_a_bounded_support_is_refused():
    model = un.Model(lambda p, x: p["rate"] * jnp.sum(x), params={"rate": 1.0},
                     support=un.supports.positive(2))
    with pytest.raises(ValueError, match="'dsm' adds Gaussian noise.*use 'sm' or 'ssm'"):
        un.fit(model, np.ones((5, 2)), "dsm", key=KEY)


def test_repeated_non_finite_steps_stop_with_a_clear_error():
    # the score turns NaN once prec passes 1.5, on the way to its optimum 1 / 0.25 = 4
    def energy(params, x):
        poison = jnp.where(params["prec"] > 1.5, jnp.nan, 0.0)
        return 0.5 * params["prec"] * jnp.sum(x**2) + poison * jnp.sum(x)

    model = un.Model(energy, params={"prec": 1.0}, support=un.supports.real(2))
    with pytest.raises(un.FitError, match=r"estimator 'sm' stopped at step \d+: from there on \d+ "
                                          r"consecutive steps \(max_failures=5\)[\s\S]*prec = "):
        un.fit(model, SCALE_DATA, "sm", key=KEY, optimizer=OPTIMIZER, max_failures=5,
               method="optimizer", stderr=False, progress_bar=False)


# ---- the optimizer loop -------------------------------------------------------------------------

def test_optimizer_route_converges_and_records_the_loss():
    fit = un.fit(SCALE, SCALE_DATA, "sm", key=KEY, optimizer=OPTIMIZER, method="optimizer",
                 stderr=False, num_steps=3000, progress_bar=False)
    assert fit.method == "optimizer" and fit.converged
    assert 0 < fit.num_steps < 3000 and fit.loss.shape == (fit.num_steps,)
    assert fit.loss[-1] < fit.loss[0]
    # SM's optimum for E = ½ λ‖x‖² is λ = d / mean ‖x‖²
    expected = 2 / np.mean(np.sum(SCALE_DATA**2, axis=1))
    np.testing.assert_allclose(fit.params["prec"], expected, rtol=1e-3)


def test_same_key_same_result_and_other_key_other_result():
    estimator = un.estimators.SSM(num_projections=1)
    common = dict(optimizer=OPTIMIZER, num_steps=200, batch_size=64, stderr=False,
                  method="optimizer", progress_bar=False)
    a = un.fit(SCALE, SCALE_DATA, estimator, key=jax.random.key(5), **common)
    b = un.fit(SCALE, SCALE_DATA, estimator, key=jax.random.key(5), **common)
    c = un.fit(SCALE, SCALE_DATA, estimator, key=jax.random.key(6), **common)
    np.testing.assert_array_equal(a.loss, b.loss)
    assert a.params["prec"] == b.params["prec"]
    assert a.params["prec"] != c.params["prec"]
    assert a.num_steps == 200 and not a.converged  # minibatch losses run all steps


def test_training_compile_options_leave_the_fit_unchanged(monkeypatch):
    from unnorm import _xla, driver

    assert _xla.training_compiler_options() in ({}, {"xla_cpu_experimental_ynn_fusion_type": ""})
    common = dict(optimizer=OPTIMIZER, num_steps=300, batch_size=64, stderr=False,
                  method="optimizer", progress_bar=False)
    tuned = un.fit(SCALE, SCALE_DATA, un.estimators.DSM(0.1), key=KEY, **common)
    plain = jax.jit(driver._train_chunk_impl, static_argnames=driver._TRAIN_CHUNK_STATIC)
    monkeypatch.setattr(driver, "_train_chunk", lambda: plain)
    default = un.fit(SCALE, SCALE_DATA, un.estimators.DSM(0.1), key=KEY, **common)
    # other fusions round differently, nothing more: float32 losses and the estimate agree
    np.testing.assert_allclose(tuned.loss, default.loss, rtol=1e-4)
    np.testing.assert_allclose(tuned.params["prec"], default.params["prec"], rtol=1e-5)


def test_minibatch_fit_with_fresh_noise_still_finds_the_optimum():
    fit = un.fit(SCALE, SCALE_DATA, un.estimators.SSM(), key=KEY, optimizer=optax.adam(0.01),
                 num_steps=2000, batch_size=100, resample=True, stderr=False,
                 progress_bar=False)
    expected = 2 / np.mean(np.sum(SCALE_DATA**2, axis=1))
    np.testing.assert_allclose(fit.params["prec"], expected, rtol=0.15)


# ---- the result ---------------------------------------------------------------------------------

def test_fit_result_summary_intervals_and_printing():
    began = time.perf_counter()
    fit = un.fit(un.models.gaussian(2), np.random.default_rng(1).normal(size=(300, 2)), "sm",
                 key=KEY, progress_bar=False)
    elapsed = time.perf_counter() - began
    table = fit.summary()
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["estimate", "std_err", "ci_lower", "ci_upper"]
    assert list(table.index) == ["mu[0]", "mu[1]", "prec[0,0]", "prec[0,1]", "prec[1,0]",
                                 "prec[1,1]"]
    lower, upper = fit.conf_int(0.9)["mu"]
    np.testing.assert_allclose(upper - lower, 2 * 1.6448536 * fit.stderr["mu"], rtol=1e-5)
    assert np.all(lower < fit.params["mu"]) and np.all(fit.params["mu"] < upper)
    np.testing.assert_allclose(table.loc["mu[1]", "std_err"], fit.stderr["mu"][1])
    text = repr(fit)
    assert "estimator='sm'" in text and "prec[0,1]" in text and "std_err" in text
    assert fit.estimator == "sm" and fit.num_observations == 300
    assert 0 < fit.wall_time <= elapsed  # the fit's own seconds, not a clock reading
    with pytest.raises(ValueError, match="level must lie strictly between 0 and 1"):
        fit.conf_int(95)


def test_without_standard_errors():
    fit = un.fit(SCALE, SCALE_DATA, "sm", key=KEY, stderr=False, progress_bar=False)
    assert fit.stderr is None and fit.covariance is None
    assert "standard errors not computed" in repr(fit)
    assert fit.summary()["std_err"].isna().all()
    with pytest.raises(ValueError, match="no standard errors"):
        fit.conf_int()


def test_no_warning_for_a_clean_closed_form_fit():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = un.fit(SCALE, SCALE_DATA, "sm", key=KEY, progress_bar=False)
    assert fit.method == "closed form" and fit.converged and fit.num_steps == 0


def test_newton_from_the_start_only_for_energies_linear_in_the_parameters():
    # An energy affine in θ makes every deterministic objective convex, and Newton may start
    # anywhere; otherwise (an RBM's free energy) the optimizer goes first and Newton refines.
    from unnorm import solvers

    spins = np.where(np.random.default_rng(0).random((500, 4)) < 0.5, -1.0, 1.0)
    ising = un.models.ising(J=np.zeros(6), h=np.zeros(4))
    rbm = un.models.rbm(4, 2)
    assert solvers.energy_is_linear(ising, ising.params, jnp.asarray(spins))
    assert not solvers.energy_is_linear(rbm, rbm.params, jnp.asarray((spins + 1) / 2))
    assert not solvers.energy_is_linear(un.models.gaussian(2), un.models.gaussian(2).params,
                                        jnp.ones((5, 2)))
    linear = un.fit(ising, spins, "pl", key=jax.random.key(0), progress_bar=False)
    assert linear.method == "newton" and linear.converged
    refined = un.fit(rbm, (spins + 1) / 2, "pl", key=jax.random.key(0), progress_bar=False)
    assert refined.method == "optimizer + newton"


def test_newton_reaches_the_minimum_of_an_objective_with_small_values():
    # f(u) = 0.01 (eᵘ - 2u), minimum at log 2 where f = 0.006: with an absolute floor in its
    # stopping rule (decrement ≤ 100 eps · max(1, |f|)) Newton stopped 0.014 short; relative
    # to |f| it runs on to float32 rounding
    def derivatives(u):
        return 0.01 * (jnp.exp(u[0]) - 2 * u[0]), 0.01 * (jnp.exp(u) - 2), 0.01 * jnp.exp(u)[None]

    u, converged = un.solvers.newton(derivatives, jnp.array([3.0]))
    assert converged and abs(float(u[0]) - np.log(2)) < 1e-4


def _quadratic_under_a_constant(target, curvature, constant):
    """``constant + ½ (u - target)ᵀ H (u - target)``: the constant swamps the value's changes
    near the minimum, as the many rows' mean of a float32 fit does (n = 10⁷, |value| = 5 and
    a decrement of Σz²/n against Newton's rounding test 100 ε |value|)."""
    def derivatives(u):
        gap = np.asarray(u, dtype=float) - target
        return constant + 0.5 * float(gap @ curvature @ gap), curvature @ gap, curvature
    return derivatives


@pytest.mark.parametrize("minimize", ["newton", "trust region"])
def test_newton_finishes_a_minimum_the_value_can_no_longer_show(minimize):
    target = np.array([0.25, -0.5])
    curvature = np.array([[2.0, 0.6], [0.6, 1.0]])
    derivatives = _quadratic_under_a_constant(target, curvature, 1e3)
    # a decrement of 1e-3: for a mean over 10⁵ rows, Σz² = n·decrement ≈ 100 from the minimum,
    # yet in float32 below the value's rounding test 100 ε |value| = 1.2e-2, where Newton stopped
    start = jnp.asarray(target + np.array([0.02, -0.03]), dtype=jnp.float32)
    decrement = un.newton.newton_decrement(derivatives(start)[1], curvature, 1.2e-7)
    assert 1e-4 < decrement < 100 * np.finfo(np.float32).eps * 1e3
    run = un.solvers.newton if minimize == "newton" else trust_region_newton
    u, converged = run(derivatives, start)
    assert converged and u.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(u, float), target, atol=4 * np.spacing(np.float32(0.5)))
    # a decrement already negligible for the data's size leaves the point as it was
    unchanged, converged = run(derivatives, start, negligible=1.01 * decrement)
    assert converged and unchanged is start


def test_polish_takes_no_step_where_the_hessian_is_not_positive_definite():
    singular = np.array([[1.0, 1.0], [1.0, 1.0]])  # a + b only: not identified
    derivatives = _quadratic_under_a_constant(np.zeros(2), singular, 1e3)
    start = jnp.asarray([0.01, 0.01], dtype=jnp.float32)
    assert un.newton.polish(derivatives, start, derivatives(start), 1e-7) is start
