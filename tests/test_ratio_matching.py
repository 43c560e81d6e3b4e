"""Ratio matching (Hyvärinen 2007) on binary and spin models, against a hand computation, the
paper's ratio form, exact draws from enumeration and the exact maximum-likelihood estimate."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _exact import exact_draws, exact_mle, flip_probability_ratios, objective_terms, pairwise_cases

import unnorm as un
from unnorm.estimators import Batch

CASES = pairwise_cases()
RM = un.estimators.RatioMatching()


def _sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def test_terms_equal_a_hand_computation():
    # two spins, E(x) = -J x1 x2 - h·x with J = 0.5, h = (0.2, -0.3), at x = (1, -1):
    # E(x) = 0.5 - 0.5 = 0, E(-1, -1) = -0.5 - 0.1 = -0.6, E(1, 1) = -0.5 + 0.1 = -0.4,
    # so ℓ = σ(0 + 0.6)² + σ(0 + 0.4)²
    spins = un.models.ising(J=np.array([0.5]), h=np.array([0.2, -0.3]))
    assert objective_terms(RM, spins, [[1.0, -1.0]])[0] == pytest.approx(
        _sigmoid(0.6) ** 2 + _sigmoid(0.4) ** 2, abs=1e-6)
    # two binary units, E(x) = -W x1 x2 - b·x with W = 1.5, b = (-0.5, 0.25), at x = (1, 0):
    # E(x) = 0.5, E(0, 0) = 0, E(1, 1) = -1.5 + 0.5 - 0.25 = -1.25
    units = un.models.boltzmann(W=np.array([1.5]), b=np.array([-0.5, 0.25]))
    assert objective_terms(RM, units, [[1.0, 0.0]])[0] == pytest.approx(
        _sigmoid(0.5) ** 2 + _sigmoid(0.5 + 1.25) ** 2, abs=1e-6)


@pytest.mark.parametrize("case", ["bm3", "bm3_binary"])
def test_terms_are_hyvarinens_g_of_the_probability_ratios(case):
    # Σ_j g(p(x)/p(x^(j)))² with g(u) = 1/(1+u), from normalized probabilities: the paper's
    # form, with Z computed rather than cancelled, at every configuration
    model = CASES[case][0]
    configs, ratios = flip_probability_ratios(model)
    expected = np.sum((1.0 / (1.0 + ratios)) ** 2, axis=1)
    np.testing.assert_allclose(objective_terms(RM, model, configs), expected, atol=1e-6)


def test_the_expected_gradient_vanishes_at_the_truth():
    # consistency, checked exactly: Σ_x p(x) ℓ(x; θ) over every configuration of the 3-unit
    # model is Hyvärinen's objective up to a constant, minimized at the truth, where its
    # gradient vanishes (to float32 rounding, 1e-7; 0.1 away it is 5e-4)
    model = CASES["bm3"][0]
    configs = model.support.enumerate()
    terms = RM.build(model, resample=False).terms
    batch = Batch(configs, np.arange(configs.shape[0]))

    def expected_loss(params):
        prob = jax.nn.softmax(-jax.vmap(lambda x: model.energy(model.params, x))(configs))
        return jnp.sum(prob * terms(params, (), batch, None))

    # one program for both points, not one per operation
    gradient = jax.jit(jax.grad(expected_loss))
    at_truth = gradient(model.params)
    for name in at_truth:
        np.testing.assert_allclose(at_truth[name], 0.0, atol=1e-7)
    moved = gradient({**model.params, "h": model.params["h"] + 0.1})
    assert np.max(np.abs(moved["h"])) > 1e-4


#: the general 10-spin Ising model (55 parameters) and the three-unit machine on spins run
#: with the long studies (-m slow); the chain and the machine on {0, 1} units by default
LONG_CASES = ("ising10", "bm3")


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.slow)
                                  if case in LONG_CASES else case for case in CASES])
def test_ratio_matching_recovers_the_truth_and_the_exact_mle(case):
    truth, start, n = CASES[case]
    data = exact_draws(truth, n, seed=11)
    fit = un.fit(start, data, "rm", key=jax.random.key(0), progress_bar=False)
    # not convex in θ even for these exponential families: the optimizer goes first
    assert fit.method == "optimizer + newton" and fit.converged
    mle = exact_mle(start, data)
    for name, value in truth.params.items():
        se = fit.stderr[name]
        z_truth = (fit.params[name] - np.asarray(value)) / se
        assert np.max(np.abs(z_truth)) < 4, (name, z_truth)
        # Both estimate the truth and the MLE is efficient, so (Hausman 1978) the variance of
        # θ̂_RM - θ̂_MLE is Var θ̂_RM - Var θ̂_MLE ≤ SE²: 3 SE is at least a 3σ bound (a normal
        # tail of 0.27% per parameter), and a wider one where RM is nearly as efficient as
        # the MLE (the weakly coupled chain).
        z_mle = (fit.params[name] - mle[name]) / se
        assert np.max(np.abs(z_mle)) < 3, (name, z_mle)


def test_ratio_matching_refuses_continuous_data():
    with pytest.raises(ValueError, match=r"'rm' \(ratio matching\) needs a binary or spin "
                                         r"support; the model's support is real\(d=\(2,\)\)"):
        un.fit(un.models.gaussian(2), np.zeros((4, 2)), "rm", key=jax.random.key(0))
