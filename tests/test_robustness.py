"""Robustness: models that copy and pickle, failures that are reported where they happen and
say what they mean, and runs that end instead of hanging."""

from __future__ import annotations

import copy
import functools
import importlib.util
import pickle
import re
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un

KEY = jax.random.key(0)
GAUSSIAN_DATA = np.random.default_rng(0).normal([1.0, -0.5], [1.0, 2.0], size=(300, 2))


def quadratic(params, x):
    return 0.5 * jnp.sum((x - params["mu"]) ** 2)


@un.model(support=un.supports.real(2))
def declared(x):
    mu = un.param("mu", jnp.zeros(2))
    return 0.5 * jnp.sum((x - mu) ** 2)


def _energies(model: un.Model, xs) -> np.ndarray:
    # one compiled program, not each of the energy's operations compiled on its own
    return np.asarray(jax.jit(jax.vmap(lambda x: model.energy(model.params, x)))(jnp.asarray(xs)))


# ---- 1. a Model copies and pickles ------------------------------------------------------------

def _built_in() -> dict[str, tuple[un.Model, np.ndarray]]:
    # built when a test asks (not at import: worker processes import this module)
    return {
        "gaussian": (un.models.gaussian(2, mean=[0.5, 0.0]), GAUSSIAN_DATA[:5]),
        "functional": (un.Model(quadratic, params={"mu": jnp.ones(2)}, support=un.supports.real(2)),
                       GAUSSIAN_DATA[:5]),
        "declared": (declared, GAUSSIAN_DATA[:5]),
        "ising": (un.models.ising(J=jnp.array([0.3, -0.2, 0.5]), h=jnp.array([0.1, 0.0, -0.1])),
                  np.array([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]])),
        "boltzmann": (un.models.boltzmann(W=jnp.array([0.4]), b=jnp.array([0.1, -0.2])),
                      np.array([[1.0, 0.0], [1.0, 1.0]])),
        "ising_chain": (un.models.ising_chain(4, coupling=0.7, field=0.2, periodic=True),
                        np.array([[1.0, -1.0, 1.0, 1.0]])),
        "rbm": (un.models.rbm(3, 2), np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])),
        "gaussian_rbm": (un.models.gaussian_rbm(2, 2, sigma=[1.0, 2.0]), GAUSSIAN_DATA[:5]),
    }


@pytest.mark.parametrize("name", ["gaussian", "functional", "declared", "ising", "boltzmann",
                                  "ising_chain", "rbm", "gaussian_rbm"])
def test_model_pickles_and_copies_to_the_same_energy(name):
    model, xs = _built_in()[name]
    expected = _energies(model, xs)
    restored = pickle.loads(pickle.dumps(model))
    assert isinstance(restored, un.Model)
    assert restored.name == model.name and repr(restored) == repr(model)
    assert restored.support.kind == model.support.kind
    assert {k: type(v) for k, v in restored.constraints.items()} == {
        k: type(v) for k, v in model.constraints.items()}
    np.testing.assert_array_equal(_energies(restored, xs), expected)
    for copied in (copy.copy(model), copy.deepcopy(model), copy.deepcopy([model])[0]):
        # immutable: a copy is the model itself, as for a tuple
        assert copied is model


def test_unpickled_model_fits_and_samples():
    model = pickle.loads(pickle.dumps(un.models.gaussian(2)))
    fit = un.fit(model, GAUSSIAN_DATA, "sm", key=KEY, stderr=False, progress_bar=False)
    np.testing.assert_allclose(fit.params["mu"], GAUSSIAN_DATA.mean(axis=0), atol=1e-4)
    idata = un.sample(model, fit.params, key=KEY, sampler="mala", num_chains=2, num_warmup=20,
                      num_samples=20, progress_bar=False, warn=False)
    assert idata.posterior["x"].shape == (2, 20, 2)


def _without_cloudpickle(monkeypatch):
    # None in sys.modules makes `import cloudpickle` raise ImportError
    monkeypatch.setitem(sys.modules, "cloudpickle", None)


def test_lambda_energy_without_cloudpickle_says_how_to_fix(monkeypatch):
    _without_cloudpickle(monkeypatch)
    model = un.Model(lambda p, x: 0.5 * jnp.sum((x - p["mu"]) ** 2),
                     params={"mu": jnp.zeros(2)}, support=un.supports.real(2))
    with pytest.raises(TypeError, match=r"cannot pickle the model '<lambda>': its energy "
                                        r"'.*<locals>.<lambda>' is a lambda or a function "
                                        r"defined inside another function \(a closure\).*top "
                                        r"level of a module.*install cloudpickle"):
        pickle.dumps(model)


def test_local_declared_model_without_cloudpickle_says_how_to_fix(monkeypatch):
    _without_cloudpickle(monkeypatch)

    @un.model(support=un.supports.real(1))
    def local(x):
        return un.param("a", 1.0) * jnp.sum(x**2)

    with pytest.raises(TypeError, match=r"its function '.*<locals>.local' is declared with "
                                        r"@un.model inside another function.*install "
                                        "cloudpickle"):
        pickle.dumps(local)


def test_partial_of_a_module_level_energy_pickles_without_cloudpickle(monkeypatch):
    _without_cloudpickle(monkeypatch)
    model = un.Model(functools.partial(quadratic), params={"mu": jnp.ones(2)},
                     support=un.supports.real(2), name="q")
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(_energies(restored, GAUSSIAN_DATA[:3]),
                                  _energies(model, GAUSSIAN_DATA[:3]))


@pytest.mark.skipif(importlib.util.find_spec("cloudpickle") is None,
                    reason="cloudpickle is not installed")
def test_closures_pickle_through_cloudpickle():
    scale = 2.0

    @un.model(support=un.supports.real(1))
    def local(x):
        return un.param("a", 1.0) * jnp.sum(x**2) / scale

    lam = un.Model(lambda p, x: scale * jnp.sum((x - p["mu"]) ** 2),
                   params={"mu": jnp.ones(1)}, support=un.supports.real(1))
    xs = np.array([[0.5], [-1.0]])
    for model in (local, lam):
        restored = pickle.loads(pickle.dumps(model))
        np.testing.assert_array_equal(_energies(restored, xs), _energies(model, xs))


# ---- 2. un.compare keeps the table when one estimator fails ------------------------------------

def nan_beyond(params, x):
    # finite on the data (|x| <= 2); NaN where NCE's noise reaches past 2.5
    return 0.5 * params["a"] * jnp.sum(x**2) + jnp.where(jnp.abs(x[0]) > 2.5, jnp.nan, 0.0)


def test_compare_records_a_failed_estimator_and_goes_on():
    model = un.Model(nan_beyond, params={"a": 1.0}, constraints={"a": un.constraints.positive},
                     support=un.supports.real(1))
    data = np.clip(np.random.default_rng(0).normal(size=(200, 1)), -2.0, 2.0)
    with pytest.warns(RuntimeWarning, match=r"un.compare: estimator 'nce' failed and its rows "
                                            r"hold NaN estimates .*FitError: estimator 'nce'"):
        table, fits = un.compare(model, data, ["sm", "nce"], key=KEY, truth={"a": 1.0},
                                 progress_bar=False, return_fits=True)
    assert list(table.columns) == ["estimator", "parameter", "estimate", "std_err", "ci_lower",
                                   "ci_upper", "time_s", "error", "error_message"]
    assert list(fits) == ["sm"]
    sm, nce = (table[table.estimator == name].iloc[0] for name in ("sm", "nce"))
    assert np.isfinite(sm["estimate"]) and np.isfinite(sm["std_err"])
    assert sm["error"] == pytest.approx(sm["estimate"] - 1.0)
    assert sm["error_message"] is None
    assert nce["parameter"] == "a" and nce["time_s"] > 0
    assert np.isnan(nce[["estimate", "std_err", "ci_lower", "ci_upper", "error"]].to_numpy(
        dtype=float)).all()
    assert nce["error_message"].startswith("FitError: estimator 'nce' stopped")


def test_compare_raises_when_every_estimator_fails():
    model = un.models.gaussian(1)
    with pytest.warns(RuntimeWarning, match=r"estimator '(sm|ssm)' failed"), \
            pytest.raises(ValueError, match="num_steps must be >= 1; got 0"):
        un.compare(model, GAUSSIAN_DATA[:, :1], ["sm", "ssm"], key=KEY, num_steps=0,
                   progress_bar=False)


# ---- 3. data checked in the dtype they are used in; failures counted per step ---------------

def test_data_that_overflow_float32_are_refused_naming_the_row():
    data = np.ones((10, 2))
    data[3, 0] = 1e39  # finite in float64, infinite in float32
    assert un.models.gaussian(2).dtype == np.float32
    with pytest.raises(ValueError, match=r"data has 1 value\(s\) too large for float32 \(first "
                                         r"at row 3: 1e\+39; float32 holds magnitudes up to "
                                         r"3.4e\+38\).*Rescale the data"):
        un.fit(un.models.gaussian(2), data, "sm", key=KEY, progress_bar=False)
    with pytest.raises(ValueError, match=r"init has 1 value\(s\) too large for float32"):
        un.sample(un.models.gaussian(2), key=KEY, init=np.array([1e39, 0.0]), num_chains=1,
                  progress_bar=False)
    with pytest.raises(ValueError, match=r"data has 1 value\(s\) too large for float32"):
        un.ksd_test(un.models.gaussian(2), None, data, key=KEY)


def nan_past_half(params, x):
    # the score is NaN once mu passes 0.5: every step from there on fails
    return 0.5 * jnp.sum((x - params["mu"]) ** 2) * jnp.where(params["mu"][0] > 0.5, jnp.nan,
                                                               1.0)


@pytest.mark.parametrize("max_failures", [7, 150])
def test_fit_stops_at_the_step_that_reaches_max_failures(max_failures):
    model = un.Model(nan_past_half, params={"mu": jnp.zeros(1)}, support=un.supports.real(1))
    data = np.random.default_rng(0).normal(2.0, 1.0, size=(100, 1))
    with pytest.raises(un.FitError) as caught:
        un.fit(model, data, "sm", key=KEY, method="optimizer", max_failures=max_failures,
               progress_bar=False)
    pattern = (rf"estimator 'sm' stopped at step (\d+): from there on {max_failures} "
               rf"consecutive steps \(max_failures={max_failures}\), steps \1 to (\d+) "
               r"\(numbered from 0\), had a non-finite loss or gradient and were skipped")
    caught.match(pattern)
    first, last = (int(g) for g in re.search(pattern, str(caught.value)).groups())
    assert last - first + 1 == max_failures
    assert first > 0  # the first steps succeed: mu walks from 0 towards the data's mean
    # the parameters reported are where the failures began (every later step was skipped)
    mu = float(re.search(r"mu = \[([-\d.e+]+)", str(caught.value)).group(1))
    assert mu > 0.5


# ---- 4. complex input is refused, not cut to its real part ------------------------------------

def test_complex_energy_is_refused_at_declaration():
    with pytest.raises(TypeError, match=r"energy\(params, x\) returned a complex value \(dtype "
                                        r"complex64\) for x of shape \(2,\); an energy must be "
                                        "real"):
        un.Model(lambda p, x: jnp.sum(x**2) * (1.0 + 1j) * p["a"], params={"a": 1.0},
                 support=un.supports.real(2))


@pytest.mark.parametrize("value", [1.0 + 2j, np.array([1.0, 2.0 + 0.5j]),
                                   jnp.array([1.0, 2.0], dtype=jnp.complex64)])
def test_complex_params_are_refused(value):
    with pytest.raises(TypeError, match=r"params\['a'\] is complex \(dtype complex\d+\); "
                                        "parameters must be real"):
        un.Model(lambda p, x: jnp.sum(p["a"] * x**2), params={"a": value},
                 support=un.supports.real(2))


def test_complex_init_and_declared_params_are_refused():
    model = un.models.gaussian(2)
    with pytest.raises(TypeError, match=r"init\['mu'\] is complex \(dtype complex128\)"):
        un.fit(model, GAUSSIAN_DATA, "sm", key=KEY, progress_bar=False,
               init={"mu": np.array([0.0, 1j]), "prec": np.eye(2)})
    with pytest.raises(TypeError, match=r"params\['mu'\] is complex"):
        un.sample(model, {"mu": np.array([0.0, 1j]), "prec": np.eye(2)}, key=KEY)
    with pytest.raises(TypeError, match=r"un.param\('a', init\): init is complex"):
        @un.model(support=un.supports.real(1))
        def complex_param(x):
            return jnp.real(un.param("a", 1.0 + 1j) * jnp.sum(x**2))


def test_complex_data_and_init_points_are_refused():
    model = un.models.gaussian(2)
    data = GAUSSIAN_DATA.astype(complex)
    with pytest.raises(TypeError, match=r"data is complex \(dtype complex128\); observations "
                                        r"must be real numbers.*np.real\(x\)"):
        un.fit(model, data, "sm", key=KEY, progress_bar=False)
    with pytest.raises(TypeError, match=r"data is complex"):
        model.support.check_data([[1.0, 2.0 + 1j]])
    with pytest.raises(TypeError, match=r"init is complex \(dtype complex128\)"):
        un.sample(model, key=KEY, init=np.array([0.0, 1j]), num_chains=1, progress_bar=False)
    with pytest.raises(TypeError, match=r"x is complex"):
        model.support.check_point(np.array([0.0, 1j]))


# ---- 5. linear-algebra failures say which matrix and what it means ---------------------------

def test_overflowing_data_name_the_data_scale():
    # x² overflows float32: the energy is already infinite at the starting parameters, which
    # the data check reports before any solve
    data = np.random.default_rng(0).normal(size=(50, 2)) * 1e30
    with pytest.raises(ValueError, match=r"(?s)energy is not finite at 50 row\(s\) of data.*An "
                                         r"infinite energy can be an overflow of float32 \(the "
                                         r"largest \|value\| in the data is [\d.]+e\+30, in row "
                                         r"\d+\): rescale the data"):
        un.fit(un.models.gaussian(2), data, "sm", key=KEY, progress_bar=False)


def redundant(params, x):
    # a and b enter only through their sum: the data identify a + b, not a and b
    return 0.5 * (params["a"] + params["b"]) * jnp.sum(x**2)


def test_non_identified_parameters_warn_and_get_nan_standard_errors():
    model = un.Model(redundant, params={"a": 0.5, "b": 0.5}, support=un.supports.real(1))
    data = np.random.default_rng(0).normal(0.0, 0.5, size=(400, 1))  # precision a + b = 4
    with pytest.warns(RuntimeWarning, match=r"the Hessian of the 'nce' objective at the "
                                            r"estimate is singular \(to float32 precision\): "
                                            r"the parameters are not identified from these data "
                                            r"along 0.71·a − 0.71·b .*Their standard errors are "
                                            r"NaN: a, b\."):
        fit = un.fit(model, data, "nce", key=KEY, progress_bar=False)
    assert fit.stages == ("newton", "sandwich")  # Newton's singular step no longer raises
    assert float(fit.params["a"] + fit.params["b"]) == pytest.approx(
        1.0 / np.mean(data**2), rel=0.15)
    assert np.isnan(fit.stderr["a"]) and np.isnan(fit.stderr["b"])
    assert np.isfinite(fit.nuisance_stderr["log_z"])
    assert fit.converged  # a minimum of the valley of minima, not a failed Newton run


# MLE's case with the long studies (-m slow: its Monte Carlo rounds sample with NUTS); KSD's
# and CD's own covariance stages are checked by default
@pytest.mark.parametrize("estimator", ["ksd", pytest.param("mle", marks=pytest.mark.slow), "cd"])
def test_estimators_with_their_own_covariance_mark_non_identified_parameters(estimator):
    # KSD, MLE and CD/PCD compute their covariance in their own final stage, not in the
    # driver's sandwich: the same check of the Hessian applies to it
    model = un.Model(redundant, params={"a": 0.5, "b": 0.5}, support=un.supports.real(1))
    data = np.random.default_rng(0).normal(0.0, 0.5, size=(400, 1))
    with pytest.warns(RuntimeWarning, match=rf"the Hessian of the '{estimator}' objective at "
                                            r"the estimate is singular .* along 0.71·a − "
                                            r"0.71·b .*Their standard errors are NaN: a, b\."):
        fit = un.fit(model, data, estimator, key=KEY, progress_bar=False)
    assert np.isnan(fit.stderr["a"]) and np.isnan(fit.stderr["b"])
    # the identified combination is estimated: precision 4 within 15% (n = 400: SE ~ 7%)
    assert float(fit.params["a"] + fit.params["b"]) == pytest.approx(4.0, rel=0.15)


def test_many_unidentified_directions_give_a_short_warning():
    # 20 parameters entering only through their sum: 19 directions the data do not identify,
    # described three at a time, with the parameters named up to twelve
    model = un.Model(lambda params, x: 0.5 * jnp.sum(params["a"]) * jnp.sum(x**2),
                     params={"a": jnp.full(20, 0.2)}, support=un.supports.real(1))
    data = np.random.default_rng(0).normal(0.0, 0.5, size=(400, 1))
    with pytest.warns(RuntimeWarning, match=r"; and 16 more directions \(the objective .*"
                                            r"Their standard errors are NaN: a\[0\], .*a\[11\] "
                                            r"and 8 more\.") as caught:
        fit = un.fit(model, data, "sm", key=KEY, progress_bar=False)
    assert max(len(str(w.message)) for w in caught) < 1500
    assert np.all(np.isnan(fit.stderr["a"]))


def natural_gaussian(params, x):
    return 0.5 * x @ params["K"] @ x - params["h"] @ x


def test_fewer_observations_than_free_parameters_give_nan_standard_errors():
    # K (positive definite, 3 free entries) and h (2): 5 free parameters from 3 observations;
    # the sandwich's middle has rank at most 3, and some standard errors came out as exactly 0
    model = un.Model(natural_gaussian, params={"K": jnp.eye(2), "h": jnp.zeros(2)},
                     constraints={"K": un.constraints.positive_definite},
                     support=un.supports.real(2))
    data = np.random.default_rng(1).normal(size=(3, 2))
    with pytest.warns(RuntimeWarning, match=r"3 observations for 5 free parameters: the "
                                            r"standard errors of estimator 'sm' cannot be "
                                            r"estimated .* are NaN"):
        fit = un.fit(model, data, "sm", key=KEY, progress_bar=False)
    assert all(np.all(np.isnan(se)) for se in fit.stderr.values())
    assert np.all(np.isnan(fit.summary()["ci_lower"]))


def test_identified_constrained_fit_does_not_warn():
    # solved in the constrained coordinates, where the precision matrix's antisymmetric
    # direction leaves the objective unchanged; it is outside the parameter space: no warning
    model = un.Model(natural_gaussian, params={"K": jnp.eye(2), "h": jnp.zeros(2)},
                     constraints={"K": un.constraints.positive_definite},
                     support=un.supports.real(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit = un.fit(model, GAUSSIAN_DATA, "sm", key=KEY, progress_bar=False)
    assert fit.stages == ("closed form", "sandwich")
    assert np.all(np.isfinite(fit.stderr["K"])) and np.all(fit.stderr["K"] > 0)


def test_sandwich_with_a_non_finite_hessian_warns_and_returns_nan():
    from unnorm.uncertainty import sandwich_covariance

    with pytest.warns(RuntimeWarning, match=r"the Hessian of the objective at the estimate has "
                                            r"non-finite entries, so the standard errors are "
                                            r"NaN.*scale of the data"):
        sandwich = sandwich_covariance(np.ones((5, 2)), np.array([[np.inf, 0.0], [0.0, 1.0]]))
    assert np.isnan(sandwich.covariance).all()


# ---- 6. HMC on an improper density ends, and says why ------------------------------------------

_IMPROPER_HMC = """
import json, warnings
import jax, jax.numpy as jnp
import unnorm as un

# exp(x**4) is not normalizable: the chains run off and the adapted step size collapses
model = un.Model(lambda p, x: -p["a"] * jnp.sum(x**4), params={"a": 1.0},
                 support=un.supports.real(1))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    idata = un.sample(model, key=jax.random.key(0), sampler="hmc", num_chains=2,
                      num_warmup=50, num_samples=50, progress_bar=False)
print(json.dumps({
    "max_n_steps": int(idata.sample_stats["n_steps"].max()),
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
}))
"""


# a child process of its own (-m slow); test_improper.py checks the runaway warnings by default
@pytest.mark.slow
def test_hmc_on_an_improper_density_ends_with_a_warning():
    import json
    import subprocess

    # a subprocess, so that a regression (a draw of millions of leapfrog steps) fails the test
    # at the timeout instead of hanging the session
    try:
        run = subprocess.run([sys.executable, "-c", _IMPROPER_HMC], capture_output=True,
                             text=True, timeout=180, env=_child_env())
    except subprocess.TimeoutExpired:
        pytest.fail("un.sample with HMC on an improper density did not end within 180 s")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["max_n_steps"] == 1024
    pattern = (r"ConvergenceWarning: \[hmc\] 100% of the draws hit the cap of 1024 leapfrog "
               r"steps per draw \(max_num_steps=1024\), and the step size adapted down to "
               r"[\d.]+e-\d+: the density may be improper \(exp\(-E\) not integrable")
    assert any(re.match(pattern, w) for w in report["warnings"]), report["warnings"]


def _child_env() -> dict:
    import os

    # the child imports this checkout's unnorm, as the tests do
    root = str(__import__("pathlib").Path(un.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def test_nuts_at_its_maximum_tree_depth_warns():
    # the check un.sample runs on NUTS's statistics (end to end for HMC above)
    from unnorm.diagnostics import warn_step_cap
    from unnorm.samplers import hmc

    cap = hmc.NUTS.step_cap({"max_tree_depth": 10})
    assert cap.min_steps == 512  # a tree of depth 10 holds 512 .. 1023 steps
    n_steps = np.where(np.arange(200).reshape(2, 100) % 4 == 0, 1023, 15)  # 25% at the cap
    with pytest.warns(un.ConvergenceWarning,
                      match=r"\[nuts\] 25% of the draws reached the maximum tree depth "
                            r"\(max_tree_depth=10, up to 1023 leapfrog steps per draw\): the "
                            "density may be improper"):
        warn_step_cap(n_steps, np.full((2, 100), 0.3), cap.min_steps, cap.what, "nuts")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # 5% of the draws at the cap, a healthy step size: no warning
        warn_step_cap(np.where(np.arange(200).reshape(2, 100) % 20 == 0, 1023, 15),
                      np.full((2, 100), 0.3), cap.min_steps, cap.what, "nuts")
    with pytest.warns(un.ConvergenceWarning, match=r"\[hmc\] The step size adapted down to "
                                                   r"3e-06: the density may be improper"):
        warn_step_cap(np.full((2, 100), 15), np.full((2, 100), 3e-6), 1024, "hit the cap",
                      "hmc")
    assert hmc.HMC.step_cap({"num_steps": 10, "max_num_steps": 1024}) is None


def test_max_num_steps_is_checked():
    model = un.Model(quadratic, params={"mu": jnp.zeros(1)}, support=un.supports.real(1))
    with pytest.raises(ValueError, match="max_num_steps must be >= 1; got 0"):
        un.sample(model, key=KEY, sampler="hmc", max_num_steps=0)
    with pytest.raises(TypeError, match=r"sampler 'nuts' does not take option\(s\) "
                                        r"\['max_num_steps'\]"):
        un.sample(model, key=KEY, sampler="nuts", max_num_steps=10)


# ---- 7. a non-convergence warning names the stage, the steps taken and the limit -------------

LINE_DATA = np.random.default_rng(3).normal(1.0, 2.0, size=(200, 1))
LINE_MODEL = un.Model(quadratic, params={"mu": jnp.zeros(1)}, support=un.supports.real(1))


def test_failed_newton_refinement_is_not_reported_as_too_few_optimizer_steps(monkeypatch):
    from unnorm import driver

    # the optimizer settles early; a Newton refinement that then fails was reported as "did not
    # converge in <the optimizer's steps> steps; raise num_steps", though num_steps was not hit
    monkeypatch.setattr(driver, "_refine", lambda model, objective, u, *args, **options: (u, False))
    with pytest.warns(RuntimeWarning, match=r"the Newton refinement of the 'sm' fit did not "
                                            r"reach a minimum of the full-data objective to "
                                            r"working precision \(the optimizer before it "
                                            r"stopped after (\d+) of num_steps=3000 steps, "
                                            r"its loss settled\)") as caught:
        fit = un.fit(LINE_MODEL, LINE_DATA, "sm", key=KEY, method="optimizer", num_steps=3000,
                     progress_bar=False)
    steps = int(re.search(r"stopped after (\d+)", str(caught[0].message)).group(1))
    assert steps == fit.num_steps < 3000 and not fit.converged


def test_optimizer_that_runs_out_of_steps_says_so():
    with pytest.warns(RuntimeWarning, match=r"the 'sm' fit did not converge: the optimizer ran "
                                            r"all 150 steps \(num_steps=150\) and the mean "
                                            r"loss of its last 50 steps still changed by more "
                                            r"than tol=1e-12"):
        fit = un.fit(LINE_MODEL, LINE_DATA, "sm", key=KEY, method="optimizer", num_steps=150,
                     tol=1e-12, stderr=False, progress_bar=False)
    assert fit.num_steps == 150 and not fit.converged
