"""Improper and near-improper targets: draws that run away, AIS on an improper density, and
an energy returned with the sign of a log density."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un
from unnorm.improper import (
    DIFFUSION_RATIO,
    SCALINGS,
    displacement_ratio,
    runaway_problems,
    unbounded_below,
)

# ---- the rule on synthetic draws (no sampler) ------------------------------------------------


def test_stationary_draws_are_silent():
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(4, 1000, 3))
    # AR(1) with autocorrelation 0.9 (integrated time 19): slow but mixing, ESS ≈ 50 per chain
    ar = np.zeros((4, 1000, 3))
    for t in range(1, 1000):
        ar[:, t] = 0.9 * ar[:, t - 1] + np.sqrt(1 - 0.81) * rng.normal(size=(4, 3))
    for draws in (iid, ar):
        lp = -0.5 * np.sum(draws**2, axis=-1)
        assert runaway_problems(draws, lp, (3,)) == []
        # the ratio the rule reads is far below its threshold for both
        assert np.max(displacement_ratio(draws)) < 0.75 * DIFFUSION_RATIO


def test_a_random_walk_along_one_coordinate_is_named():
    # E = x0²: x1 is a random walk, the log-density does not rise
    rng = np.random.default_rng(1)
    draws = np.stack([rng.normal(size=(4, 800)),
                      np.cumsum(rng.normal(size=(4, 800)), axis=1)], axis=-1)
    problems = runaway_problems(draws, -draws[..., 0] ** 2, (2,))
    assert len(problems) == 1
    assert problems[0].startswith("The draws run away along x[1]:")
    assert "log-density does not rise" in problems[0] and "E flat" in problems[0]


def test_a_drift_with_rising_log_density_is_named_with_its_direction():
    # E = -(x0 + x1): both coordinates drift upwards, the log-density rises
    rng = np.random.default_rng(2)
    draws = np.cumsum(0.5 + rng.normal(size=(4, 400, 2)), axis=1)
    problems = runaway_problems(draws, draws.sum(axis=-1), (2,))
    assert len(problems) == 1
    assert re.search(r"run away along x\[0\], x\[1\].*principal direction of the growth: "
                     r"\+0\.[67]\d·x\[\d\] \+0\.[67]\d·x\[\d\]\).*log-density keeps rising",
                     problems[0]), problems[0]


@pytest.mark.parametrize("value", [np.inf, np.nan, 3e7])
def test_non_finite_or_enormous_values_are_reported(value):
    draws = np.random.default_rng(3).normal(size=(2, 100, 2, 3))
    draws[1, 50, 1, 2] = value
    problems = runaway_problems(draws, np.zeros((2, 100)), (2, 3))
    assert len(problems) == 1 and "along x[1, 2]" in problems[0]
    assert "density may be improper" in problems[0]


def test_a_non_finite_log_density_is_reported():
    draws = np.random.default_rng(4).normal(size=(2, 100, 1))
    lp = np.zeros((2, 100))
    lp[0, 3] = np.inf
    assert "log-density that is not finite" in runaway_problems(draws, lp, (1,))[0]


# ---- un.sample: one check for every continuous sampler ---------------------------------------

QUARTIC = un.Model(lambda p, x: -jnp.sum(x**4), params={}, support=un.supports.real(1),
                   name="minus_quartic")
FLAT = un.Model(lambda p, x: 0.0 * jnp.sum(x), params={}, support=un.supports.real(2),
                name="flat")
LINEAR = un.Model(lambda p, x: -jnp.sum(x), params={}, support=un.supports.real(2),
                  name="linear")
HALF = un.Model(lambda p, x: x[0] ** 2, params={}, support=un.supports.real(2),
                name="improper_along_x1")
# p(x) ∝ x⁻² on (0, ∞): not integrable at 0, where the chains go until x underflows
POSITIVE = un.Model(lambda p, x: jnp.sum(2.0 * jnp.log(x)), params={},
                    support=un.supports.positive(1), name="inverse_square")


def _runaway_messages(model, sampler, **kwargs):
    kwargs = {"num_chains": 4, "num_warmup": 200, "num_samples": 400, **kwargs}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = un.sample(model, key=jax.random.key(0), sampler=sampler, progress_bar=False,
                          **kwargs)
    messages = [str(w.message) for w in caught
                if issubclass(w.category, un.ConvergenceWarning) and "The draws" in str(w.message)]
    return idata, messages


@pytest.mark.parametrize("model, sampler, pattern", [
    # E → -∞: the draws drift out and the log-density keeps rising
    (QUARTIC, "mala", r"\[mala\] The draws run away along x\[0\].*keeps rising"),
    (LINEAR, "rwmh", r"\[rwmh\] The draws reached values of magnitude up to .* along "
                     r"x\[0\], x\[1\]"),
    (FLAT, "langevin", r"\[langevin\] The draws (run away along|reached)"),
    (HALF, "rwmh", r"\[rwmh\] The draws run away along x\[1\]:.*E flat"),
    (POSITIVE, "rwmh", r"\[rwmh\] The draws reached non-finite values along x\[0\]"),
])
def test_runaway_draws_warn_naming_the_direction(model, sampler, pattern):
    kwargs = {"num_chains": 8, "num_warmup": 100, "num_samples": 800} if model is HALF else {}
    idata, messages = _runaway_messages(model, sampler, **kwargs)
    assert any(re.search(pattern, m) for m in messages), messages
    assert any("unnorm expects E(x) = -log p(x) + const" in m for m in messages)


def test_a_proper_target_does_not_warn_of_runaway():
    _, messages = _runaway_messages(un.models.gaussian(2), "mala", num_warmup=200,
                                    num_samples=800)
    assert messages == []


# ---- AIS on an improper density ---------------------------------------------------------------


def test_ais_on_an_improper_density_says_so():
    with pytest.warns(un.ConvergenceWarning, match=r"method='ais': .*the density may be "
                                                   r"improper .*log Z is infinite"):
        lz = un.log_partition(LINEAR, method="ais", key=jax.random.key(0), num_chains=32,
                              num_temperatures=20, progress_bar=False)
    assert lz.ess < 2


# ---- the sign convention of un.fit ------------------------------------------------------------


def _gaussian_family(sign: float) -> un.Model:
    return un.Model(lambda p, x: sign * jnp.sum(0.5 * p["prec"] * (x - p["mu"]) ** 2),
                    params={"mu": jnp.zeros(1), "prec": jnp.ones(1)},
                    constraints={"prec": un.constraints.positive},
                    support=un.supports.real(1))


def test_unbounded_below_on_rays():
    t = np.asarray(SCALINGS)
    radii = np.array([0.3, 1.0, 2.0, 0.01])
    assert unbounded_below(-np.outer(radii, t) ** 2)          # log p of a Gaussian
    assert not unbounded_below(np.outer(radii, t) ** 2)       # its energy
    # falls, but only by a few nats in all: a flat-ish energy, not a sign error
    assert not unbounded_below(-0.01 * np.outer(radii, t))
    # falls on one ray of four: a direction of a mixture, not the whole energy
    mixed = np.outer(radii, t) ** 2
    mixed[0] = -mixed[0] * 100
    assert not unbounded_below(mixed)


def test_fit_of_a_log_density_warns_about_the_sign():
    data = np.random.default_rng(0).normal(1.0, 2.0, size=(200, 1))
    with pytest.warns(RuntimeWarning, match=r"the energy decreases without bound along the "
                                            r"data scaled outward .* at the fitted "
                                            r"parameters.*did you return the log density\?"):
        un.fit(_gaussian_family(-1.0), data, "sm", key=jax.random.key(0), progress_bar=False,
               stderr=False, num_steps=100)


def test_fit_of_an_energy_does_not_warn_about_the_sign():
    data = np.random.default_rng(0).normal(1.0, 2.0, size=(200, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit = un.fit(_gaussian_family(1.0), data, "sm", key=jax.random.key(0),
                     progress_bar=False, stderr=False)
    assert abs(float(fit.params["mu"][0]) - data.mean()) < 0.01
