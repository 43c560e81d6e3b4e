"""Fits of data far from the origin or on a large scale: the refinement reaches the minimum the
optimizer stops short of (a trust region after damped Newton), the closed form is not taken for
a score that only looks affine there, and a warning names the parameters the refinement moved
by many standard errors."""

from __future__ import annotations

import re
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import unnorm as un
from unnorm import solvers
from unnorm.trust_region import trust_region_newton

KEY = jax.random.key(0)
GAUSSIAN = un.models.gaussian(1)  # one model object: its compiled programs serve every test
N = 1000


def _z_scores(fit, truth: dict) -> np.ndarray:
    return np.concatenate([
        np.ravel((np.asarray(fit.params[name], float) - value)
                 / np.asarray(fit.stderr[name], float))
        for name, value in truth.items()])


def _far_data(loc: float) -> np.ndarray:
    return np.random.default_rng(3).normal(loc, 1.0, size=(N, 1))


@pytest.mark.parametrize("estimator, loc", [
    ("sm", 1e3), ("sm", 1e6),
    # each compiles its own programs, 10-15 s on two shared cores
    pytest.param("ssm", 1e6, marks=pytest.mark.slow),
    pytest.param("dsm", 1e6, marks=pytest.mark.slow)])
def test_gaussian_far_from_the_origin_is_recovered(estimator, loc):
    # Before, "sm" returned mu = 87.8 ± 9.6 at loc 1e3 and the closed form mu = 333333 at 1e6.
    # In float32 a location of 1e6 is held to a spacing of 0.0625, about 2 standard errors
    # at n = 1000: |z| < 4 still holds, with the estimate one spacing off at worst. DSM
    # (sigma 0.1) fits a precision of 1/(1 + 0.01), 0.13 standard errors from 1.
    with pytest.warns(RuntimeWarning, match=r"stopped far from the minimum .* moved mu\[0\] "
                                            r"from .* standard errors.*badly scaled"):
        fit = un.fit(GAUSSIAN, _far_data(loc), estimator, key=KEY, progress_bar=False)
    assert "trust region" in fit.stages and fit.converged
    z = _z_scores(fit, {"mu": loc, "prec": 1.0})
    assert np.max(np.abs(z)) < 4, (fit.params, fit.stderr)


@pytest.mark.slow
def test_dsm_on_a_large_scale_is_calibrated():
    # DSM's control variate leaves a constant d/(2σ²) = 50 in the loss whose rounding, written
    # out, swamped the part that depends on θ at data of scale 1e4 (a precision of 1e-8):
    # Newton's tests saw a minimum at 2.8e-6 ± 1.7e-7, 16 standard errors off, in every data
    # set. The loss is now computed without it.
    data = np.random.default_rng(4).normal(0.0, 1e4, size=(N, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the optimizer is far from 1e-8
        fit = un.fit(GAUSSIAN, data, "dsm", key=KEY, progress_bar=False)
    z = _z_scores(fit, {"mu": 0.0, "prec": 1e-8})
    assert np.max(np.abs(z)) < 4, (fit.params, fit.stderr)
    # and its standard error is DSM's with the control variate at any scale: the precision
    # is about mean(z²)/mean(x²), two means of squared normals, a relative SE of √(4/n)
    assert float(fit.stderr["prec"][0, 0]) == pytest.approx(
        np.sqrt(4.0 / N) * 1e-8, rel=0.2)


def test_estimate_is_invariant_to_shifting_the_data():
    # the shift of the data is the shift of mu, to the float32 spacing at 1e3 (6e-5), and the
    # precision and standard errors do not move
    base = _far_data(0.0)
    near = un.fit(GAUSSIAN, base, "sm", key=KEY, progress_bar=False)
    with pytest.warns(RuntimeWarning, match="stopped far from the minimum"):
        far = un.fit(GAUSSIAN, base + 1e3, "sm", key=KEY, progress_bar=False)
    np.testing.assert_allclose(far.params["mu"] - 1e3, near.params["mu"], atol=1e-3)
    np.testing.assert_allclose(far.params["prec"], near.params["prec"], rtol=1e-3)
    np.testing.assert_allclose(far.stderr["mu"], near.stderr["mu"], rtol=1e-3)


@pytest.mark.slow  # its own programs (2-D, n = 300): about 20 s on two shared cores
def test_scaled_two_dimensional_gaussian():
    # data scaled by 1e3: the precision 1e-6·I is recovered (it was the closed form's false
    # route, or the optimizer's answer, at such scales)
    scale = 1e3
    data = np.random.default_rng(1).normal(size=(300, 2)) * scale
    with pytest.warns(RuntimeWarning, match=r"moved prec\["):
        fit = un.fit(un.models.gaussian(2), data, "sm", key=KEY, progress_bar=False)
    assert "closed form" not in fit.stages
    z = _z_scores(fit, {"mu": np.zeros(2), "prec": np.eye(2) / scale**2})
    assert np.max(np.abs(z)) < 4, (fit.params, fit.stderr)


def _nce_fit(data, model=GAUSSIAN):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no singular Hessian, no refinement far from the start
        return un.fit(model, data, "nce", key=KEY, progress_bar=False)


@pytest.mark.slow
def test_nce_far_from_the_origin_is_recovered_and_moves_with_the_data():
    # Before, NCE returned mu = -0.19 at loc 1e3, with log Z = -496634 and a singular-Hessian
    # warning: from mu = 0 the log-ratio of model to noise fell by 1000 per unit of x, every
    # observation and noise draw sat on a saturated softplus, and log Z had to travel with mu
    # (by 1000 per unit of mu) at Adam's pace. NCE now starts from the model nearest its noise.
    base = _far_data(0.0)
    near = _nce_fit(base)
    far = _nce_fit(base + 1e3)
    assert far.converged
    z = _z_scores(far, {"mu": 1e3, "prec": 1.0})
    assert np.max(np.abs(z)) < 4, (far.params, far.stderr)
    # log Z of ½ Λ (x − μ)² does not depend on μ: log √(2π/Λ)
    assert abs(far.nuisance["log_z"] - 0.5 * np.log(2 * np.pi)) < 4 * far.nuisance_stderr["log_z"]
    # the shift of the data is the shift of mu, to the float32 spacing at 1e3 (6e-5) and the
    # refinement's tolerance, and the precision and standard errors do not move
    np.testing.assert_allclose(far.params["mu"] - 1e3, near.params["mu"], atol=1e-3)
    np.testing.assert_allclose(far.params["prec"], near.params["prec"], rtol=1e-3)
    np.testing.assert_allclose(far.stderr["mu"], near.stderr["mu"], rtol=1e-3)


def test_nce_from_a_far_off_init_starts_as_the_default_does():
    # Before, init={"mu": 0, "prec": 1} on N(1e3, 1) skipped NCE's own start: the fit ended
    # at mu = 0.014 with log Z = -497122, "converged", with a singular-Hessian warning. An
    # init that barely overlaps the noise is now replaced as the defaults are.
    data = _far_data(1e3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = un.fit(GAUSSIAN, data, "nce", init={"mu": np.zeros(1), "prec": np.eye(1)},
                     key=KEY, progress_bar=False)
    assert fit.converged
    z = _z_scores(fit, {"mu": 1e3, "prec": 1.0})
    assert np.max(np.abs(z)) < 4, (fit.params, fit.stderr)
    default = _nce_fit(data)
    np.testing.assert_array_equal(fit.params["mu"], default.params["mu"])
    # an init that overlaps the noise is kept: the fit from it reaches the same minimum
    near = un.fit(GAUSSIAN, data, "nce", init={"mu": np.full(1, 1e3), "prec": np.eye(1)},
                  key=KEY, progress_bar=False)
    np.testing.assert_allclose(near.params["mu"], default.params["mu"], atol=1e-3)


def test_nce_at_a_mean_of_a_million_is_recovered():
    # μ is held to a float32 spacing of 0.0625 there, about 1.4 standard errors: the trust
    # region finds the optimizer's answer a minimum to that precision where damped Newton's
    # tests do not allow for it
    fit = _nce_fit(_far_data(1e6))
    assert fit.converged
    z = _z_scores(fit, {"mu": 1e6, "prec": 1.0})
    assert np.max(np.abs(z)) < 4, (fit.params, fit.stderr)


@pytest.mark.slow  # its own programs (2-D, n = 300): about 20 s on two shared cores
def test_nce_on_a_scaled_two_dimensional_gaussian():
    scale = 1e3
    data = np.random.default_rng(1).normal(size=(300, 2)) * scale
    fit = _nce_fit(data, un.models.gaussian(2))
    assert fit.converged
    z = _z_scores(fit, {"mu": np.zeros(2), "prec": np.eye(2) / scale**2})
    assert np.max(np.abs(z)) < 4, (fit.params, fit.stderr)


@pytest.mark.parametrize("loc", [0.0, 1e8])
def test_standard_errors_at_a_data_scale_of_1e8_in_float32(loc):
    # Data on a scale of 1e8 put a precision of 1e-16 in float32. Score matching's location
    # then has per-observation gradients Λ²(x − μ) of 1e-24, whose squares, 1e-48, flushed
    # to 0 in J (a standard error of 1253 for a true 3.1e6), and the pseudo-inverse cut the
    # location's curvature off beside the log-precision's (NCE: 4e-11), in float64 too. At
    # loc 1e8 the closed form was taken, at mu = 1e-8. The standard errors are now those of
    # the well-scaled fit, scaled, to float32 rounding.
    base = _far_data(0.0)
    scale = 1e8
    fits = {}
    for estimator in ("sm", "nce"):
        with warnings.catch_warnings():
            # score matching's optimizer stops far from a precision of 1e-16
            warnings.simplefilter("ignore", RuntimeWarning)
            near = un.fit(GAUSSIAN, base, estimator, key=KEY, progress_bar=False)
            far = fits[estimator] = un.fit(GAUSSIAN, loc + scale * base, estimator, key=KEY,
                                           progress_bar=False)
        assert "closed form" not in far.stages and far.converged
        z = _z_scores(far, {"mu": loc, "prec": scale**-2})
        assert np.max(np.abs(z)) < 4, (estimator, far.params, far.stderr)
        np.testing.assert_allclose(far.stderr["mu"] / scale, near.stderr["mu"], rtol=0.01,
                                   err_msg=estimator)
        np.testing.assert_allclose(far.stderr["prec"] * scale**2, near.stderr["prec"],
                                   rtol=0.01, err_msg=estimator)
    # score matching's location is the sample mean, its standard error the sample's s/√n
    sample_se = scale * base.std() / np.sqrt(N)
    assert float(fits["sm"].stderr["mu"][0]) == pytest.approx(sample_se, rel=1e-3)


def test_nce_at_extreme_data_scales_is_the_well_scaled_fit_scaled():
    # Before, at a scale of 1e10 NCE's start overflowed (mu = -3e13, prec = 3e-28) and the
    # fit stopped with non-finite losses; at 1e-8 the start was not sought (the model, a
    # million times wider than the noise, gave importance weights as even as a model twice
    # as wide) and the fit ended at prec = 1.2e-5 / scale² ± 9e-6, finite standard errors
    # around a precision 1e5 of them off. Float32 holds these problems: each fit is the
    # well-scaled one, scaled, to the Newton refinement's stopping rule (a decrease within
    # 100 ε of the loss, about 0.2 standard errors at n = 1000; 0.05 is seen) and the
    # standard errors to float32 rounding.
    base = _far_data(0.0)
    near = _nce_fit(base)
    for scale, loc in ((1e10, 0.0), (1e-8, 0.0), (1e-8, 1e-8), (1e-6, 0.0)):
        far = _nce_fit(loc + scale * base)
        assert far.converged, scale
        for name, power in (("mu", 1), ("prec", -2)):
            se = far.stderr[name] / scale**power
            np.testing.assert_allclose(se, near.stderr[name], rtol=0.01, err_msg=str(scale))
            shift = loc / scale if name == "mu" else 0.0
            gap = (far.params[name] / scale**power - shift - near.params[name]) / se
            assert np.max(np.abs(gap)) < 0.5, (scale, name, far.params, near.params)
        # log Z = ½ log(2π / Λ), with Λ = prec / scale²
        truth = 0.5 * np.log(2 * np.pi) + np.log(scale)
        assert abs(far.nuisance["log_z"] - truth) < 4 * far.nuisance_stderr["log_z"], scale


def test_nce_at_a_data_scale_of_1e18_is_the_well_scaled_fit_scaled():
    # Before, the default noise's covariance (1e36, summed over the rows) overflowed float32
    # and the fit stopped with FitError; with the noise factored in units of the data's
    # spread, the start's location curvature (1e-36 in products of 1e-18) flushed to 0 and
    # the start went to mu = -3e31; and the full-data Hessian summed the precision's
    # cotangents ½(x − μ)² (1e36 a row) over 1000 rows, past float32's 3.4e38. Float32
    # holds each row's derivatives: the fit is the well-scaled one, scaled, as at 1e10.
    base = _far_data(0.0)
    near = _nce_fit(base)
    scale = 1e18
    for loc in (0.0, scale):
        far = _nce_fit(loc + scale * base)
        assert far.converged and "optimizer" not in far.stages, (loc, far.stages)
        for name, power in (("mu", 1), ("prec", -2)):
            se = far.stderr[name] / scale**power
            np.testing.assert_allclose(se, near.stderr[name], rtol=0.01, err_msg=name)
            gap = (far.params[name] / scale**power - (loc / scale if name == "mu" else 0.0)
                   - near.params[name]) / se
            assert np.max(np.abs(gap)) < 0.5, (loc, name, far.params, near.params)
        truth = 0.5 * np.log(2 * np.pi) + np.log(scale)
        assert abs(far.nuisance["log_z"] - truth) < 4 * far.nuisance_stderr["log_z"], loc


@pytest.mark.slow  # its own programs (2-D, n = 500): about 25 s on two shared cores
def test_nce_on_a_two_dimensional_gaussian_at_a_scale_of_1e10():
    # A Cholesky factor's off-diagonal curvature (1e20) beside a location's (1e-20): from
    # NCE's start damped Newton stopped 1.4 standard errors from the minimum and called it
    # one. The refinement from an estimator's own start now runs in coordinates scaled to
    # unit curvature; the fit is the well-scaled one, scaled, to the Newton refinement's
    # stopping rule (0.2 standard errors, see above).
    model = un.models.gaussian(2)
    base = np.random.default_rng(1).normal(size=(500, 2)) @ np.array([[1.0, 0.0],
                                                                       [0.6, 0.8]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        near = un.fit(model, base, "nce", key=KEY, progress_bar=False)
    scale = 1e10
    far = _nce_fit(scale * (base + 1.0), model)
    for name, power in (("mu", 1), ("prec", -2)):
        se = far.stderr[name] / scale**power
        np.testing.assert_allclose(se, near.stderr[name], rtol=0.01, err_msg=name)
        gap = (far.params[name] / scale**power - (name == "mu") - near.params[name]) / se
        assert np.max(np.abs(gap)) < 0.5, (name, far.params, near.params)


def test_nce_beyond_what_float32_holds_gives_no_standard_error():
    # Data on a scale of 1e-18 have a variance of 1e-36, below float32's precision floor
    # (3.4e-35): the noise cannot be fitted to them. The fit ended at mu = 5e9 ± 3e9 and
    # log Z = -16.3 ± 0.02 (the truth is -40.5), only prec's standard error NaN.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        lost = un.fit(GAUSSIAN, 1e-18 * _far_data(0.0), "nce", key=KEY, progress_bar=False)
    # the sandwich's sums may underflow first, which says so and names them as well
    assert any(re.search(r"standard errors of the 'nce' fit are NaN \(mu\[0\], prec\[0,0\], "
                         r"nuisance.log_z\): the data's variance is too small "
                         r"for float32 .* standard deviation is 1.01e-18", str(w.message))
               or re.search(r"standard errors of the 'nce' fit are NaN: the derivatives of its "
                            r"objective in mu\[0\], prec\[0,0\], nuisance.log_z are too small "
                            r"for float32", str(w.message))
               for w in caught), [str(w.message) for w in caught]
    assert all(np.all(np.isnan(se)) for se in lost.stderr.values())
    assert np.isnan(lost.nuisance_stderr["log_z"])


def test_nce_doubts_a_fit_far_wider_than_its_noise():
    # the test NCE gives the driver: on well-scaled data, a model a thousand times wider than
    # the data (the noise has the data's moments) is no fit of them, the fitted one is
    from unnorm import driver

    data = jnp.asarray(_far_data(0.0), dtype=jnp.float32)
    objective = driver._objective(un.estimators.NCE(), GAUSSIAN, False)
    state = objective.init(GAUSSIAN.params, KEY, data)
    state, nuisance = objective.nuisance(GAUSSIAN.params, state, data)
    fitted = {"mu": jnp.zeros(1), "prec": jnp.eye(1)}
    assert objective.check_estimate((fitted, nuisance), state, data) is None
    wide = {"mu": jnp.zeros(1), "prec": jnp.full((1, 1), 1e-6)}
    message = objective.check_estimate((wide, nuisance), state, data)
    assert re.search(r"varies over draws of the noise .* by 1e-06 times .* far wider than "
                     r"the data, .* standard deviation is 1.0\d", message), message


def test_nce_noise_and_start_widths_scale_with_the_data():
    from unnorm.estimators import nce

    base = jnp.asarray(_far_data(0.0), dtype=jnp.float32)
    loc, tril, whitening = nce._fit_noise(GAUSSIAN.support, base)
    # the ridge is relative: at 1e-8 the noise was ten times the data's variance
    tiny_loc, tiny_tril, tiny_whitening = nce._fit_noise(GAUSSIAN.support, 1e-8 * base)
    np.testing.assert_allclose(np.asarray(tiny_tril) / 1e-8, np.asarray(tril), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(tiny_loc) / 1e-8, np.asarray(loc), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(tiny_whitening) * 1e-8, np.asarray(whitening),
                               rtol=1e-5)
    # at 1e18 the covariance itself (1e36, summed over the rows) is past float32's range;
    # the noise is factored without forming it
    huge_loc, huge_tril, huge_whitening = nce._fit_noise(GAUSSIAN.support, 1e18 * base)
    np.testing.assert_allclose(np.asarray(huge_tril) / 1e18, np.asarray(tril), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(huge_loc) / 1e18, np.asarray(loc), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(huge_whitening) * 1e18, np.asarray(whitening),
                               rtol=1e-5)
    # a model 1e8 times wider than the noise (log-densities spread 1e-16 times as much): the
    # noise widened to its width, then narrowed a hundred times at each search
    np.testing.assert_allclose(nce._widening(1e-16, True), [1e8, 1e6, 1e4, 1e2, 1.0],
                               rtol=1e-12)
    assert nce._widening(0.01, True) == [1.0]  # near enough
    assert nce._widening(1e-16, False) == [1.0]  # a user's noise is not widened
    assert nce._widening(float("nan"), True) == [1.0]


def test_score_matching_at_a_data_scale_of_1e10_and_beyond_in_float32():
    # At 1e10 the location's curvature Λ² (1e-40) is 0 in float32: Newton stopped at
    # mu = -1.46e11, 1e4 standard errors short, calling it a minimum, with a finite standard
    # error. The refinement now goes on in coordinates scaled to unit curvature.
    base = _far_data(0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the optimizer stops far from 1e-20
        near = un.fit(GAUSSIAN, base, "sm", key=KEY, progress_bar=False)
        far = un.fit(GAUSSIAN, 1e10 * base, "sm", key=KEY, progress_bar=False)
    assert far.converged
    z = _z_scores(far, {"mu": 0.0, "prec": 1e-20})
    assert np.max(np.abs(z)) < 4, (far.params, far.stderr)
    np.testing.assert_allclose(far.stderr["mu"] / 1e10, near.stderr["mu"], rtol=0.01)
    np.testing.assert_allclose(far.stderr["prec"] * 1e20, near.stderr["prec"], rtol=0.01)
    # at 1e11, Λ² of 1e-44 is 0 before any scaling enters: no standard error is finite
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        lost = un.fit(GAUSSIAN, 1e11 * base, "sm", key=KEY, progress_bar=False)
    assert any(re.search(r"standard errors of the 'sm' fit are NaN: the derivatives of its "
                         r"objective in mu\[0\].* too small for float32", str(w.message))
               for w in caught), [str(w.message) for w in caught]
    assert all(np.all(np.isnan(se)) for se in lost.stderr.values())


def test_the_rescaled_pass_is_the_pass_in_scaled_coordinates():
    # the programs the fits above compiled (the model, score matching, n = 1000): S g, S H S
    # and S J S with S = diag(scale), at the same value
    from unnorm import driver

    objective = driver._objective(un.estimators.SM(), GAUSSIAN, False)
    data = jnp.asarray(10.0 * _far_data(0.0), dtype=jnp.float32)
    u = GAUSSIAN.to_unconstrained({"mu": jnp.full(1, 0.5), "prec": jnp.full((1, 1), 0.02)})
    flat = ravel_pytree(u)[0]
    state = objective.init(GAUSSIAN.params, KEY, data)
    options = dict(model=GAUSSIAN, objective=objective, constrained=False)
    plain = solvers.derivatives(flat, u, data, state, KEY, **options)
    scale = np.array([10.0, 0.5])
    scaled = solvers.derivatives(flat, u, data, state, KEY, scale=jnp.asarray(scale, flat.dtype),
                                 **options)
    outer = np.outer(scale, scale)
    for name, got, want in zip(scaled._fields, scaled,
                               (plain.value, scale * plain.grad, outer * plain.hessian,
                                outer * plain.score_outer), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=0,
                                   err_msg=name)


def _flushing_passes(hessian, score_outer):
    """The sandwich's full-data pass as float32 computes it: in the coordinates scaled by
    ``scale``, entries below the smallest normal number flushed to 0."""
    tiny = np.finfo(np.float32).tiny

    def passes(scale=None):
        outer = np.outer(*(2 * [np.ones(2) if scale is None else np.asarray(scale, float)]))

        def flushed(matrix):
            matrix = outer * matrix
            return np.where(np.abs(matrix) < tiny, 0.0, matrix).astype(np.float32)

        return solvers.FullData(np.float32(0.0), np.zeros(2, np.float32), flushed(hessian),
                                flushed(score_outer))

    return passes


def test_sandwich_sums_that_underflow_are_rescaled_or_reported():
    from unnorm import driver

    hessian = np.diag([1.0, 1e-36])
    # J of 1e-46 flushes to 0 in float32, and comes back in coordinates where H is 1
    passes = _flushing_passes(hessian, np.diag([1.0, 1e-46]))
    h, j, underflow = driver._rescaled_sums(passes(), passes, np.float32)
    np.testing.assert_allclose(np.diag(h), [1.0, 1e-36], rtol=1e-6)
    np.testing.assert_allclose(np.diag(j), [1.0, 1e-46], rtol=1e-6)
    assert not underflow.any()
    # J of 1e-80 is 1e-44 even there; a curvature of 1e-90 is 0 in every pass, beside one
    # that needed the rescaling: the parameters are reported, and no standard error is finite
    for h, j in ((hessian, np.diag([1.0, 1e-80])),
                 (np.diag([1e-36, 1e-90]), np.diag([1e-46, 0.0]))):
        passes = _flushing_passes(h, j)
        *_, underflow = driver._rescaled_sums(passes(), passes, np.float32)
        assert underflow.tolist() == [False, True]
    # a parameter the objective ignores, where nothing else underflows, is left to the
    # singular-Hessian check
    passes = _flushing_passes(np.diag([1.0, 0.0]), np.diag([1.0, 0.0]))
    assert not driver._rescaled_sums(passes(), passes, np.float32)[2].any()
    objective = types.SimpleNamespace(nuisance=None)
    fitted = {"a": np.zeros(1), "b": np.zeros(1)}
    with pytest.warns(RuntimeWarning, match=r"standard errors of the 'sm' fit are NaN: the "
                                            r"derivatives of its objective in b\[0\] are too "
                                            r"small for float32 .* Compute in float64 .* or "
                                            r"standardize the data"):
        cov = driver._mark_underflow(np.eye(2), underflow, objective, fitted, "'sm'",
                                     np.float32)
    assert np.isnan(cov).all()


def test_failed_refinement_on_far_data_says_the_data_may_be_badly_scaled(monkeypatch):
    from unnorm import driver

    monkeypatch.setattr(driver, "_refine", lambda model, objective, u, *args, **options: (u, False))
    with pytest.warns(RuntimeWarning, match=r"did not reach a minimum .* The data may be badly "
                                            r"scaled \(coordinate 0 of the data has mean "
                                            r"1e\+03 and standard deviation 1.0\d\): center"):
        fit = un.fit(GAUSSIAN, _far_data(1e3), "sm", key=KEY, num_steps=200,
                     progress_bar=False)
    assert not fit.converged


def test_no_warning_for_well_scaled_fits():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = un.fit(GAUSSIAN, _far_data(1.0), "sm", key=KEY, progress_bar=False)
    assert fit.stages == ("optimizer", "newton", "sandwich")


def test_trust_region_crosses_a_flat_tail_and_a_badly_scaled_coordinate():
    # f(a, b) = -1/(1 + (a - 1e4)²) + (b - 2)²: a Cauchy-like tail in a, flat and concave far
    # from 1e4, where damped Newton's shifted steps stall, beside a coordinate of unit scale
    def derivs(u):
        a, b = float(u[0]) - 1e4, float(u[1]) - 2.0
        q = 1.0 + a * a
        value = -1.0 / q + b * b
        grad = np.array([2 * a / q**2, 2 * b])
        haa = (2 * q - 8 * a * a) / q**3
        return value, grad, np.array([[haa, 0.0], [0.0, 2.0]])

    u, converged = trust_region_newton(derivs, jnp.zeros(2))
    assert converged
    # float32 holds 1e4 to a spacing of 1e-3
    np.testing.assert_allclose(np.asarray(u, float), [1e4, 2.0], atol=2e-3)


def test_trust_region_returns_a_minimum_unchanged():
    start = jnp.asarray([1.0, -2.0])

    def derivs(u):
        d = np.asarray(u, float) - [1.0, -2.0]
        return float(d @ d), 2 * d, 2 * np.eye(2)

    u, converged = trust_region_newton(derivs, start)
    assert converged and u is start
