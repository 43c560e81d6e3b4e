"""Minimum probability flow (Sohl-Dickstein, Battaglino & DeWeese 2011) on binary and spin
models, against a hand computation, the paper's form, exact draws from enumeration and the
exact maximum-likelihood estimate."""

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
MPF = un.estimators.MPF()


def test_terms_equal_a_hand_computation():
    # two spins, J = 0.5, h = (0.2, -0.3), at x = (1, -1): E(x) = 0, E(-1, -1) = -0.6,
    # E(1, 1) = -0.4, so ℓ = exp((0 + 0.6)/2) + exp((0 + 0.4)/2)
    spins = un.models.ising(J=np.array([0.5]), h=np.array([0.2, -0.3]))
    assert objective_terms(MPF, spins, [[1.0, -1.0]])[0] == pytest.approx(
        math.exp(0.3) + math.exp(0.2), abs=1e-6)
    # two binary units, W = 1.5, b = (-0.5, 0.25), at x = (1, 0): E(x) = 0.5, E(0, 0) = 0,
    # E(1, 1) = -1.25
    units = un.models.boltzmann(W=np.array([1.5]), b=np.array([-0.5, 0.25]))
    assert objective_terms(MPF, units, [[1.0, 0.0]])[0] == pytest.approx(
        math.exp(0.25) + math.exp(0.875), abs=1e-6)


@pytest.mark.parametrize("case", ["bm3", "bm3_binary"])
def test_terms_are_the_flow_to_every_neighbour(case):
    # exp((E(x) - E(x^(j)))/2) = sqrt(p(x^(j)) / p(x)), from normalized probabilities
    model = CASES[case][0]
    configs, ratios = flip_probability_ratios(model)
    np.testing.assert_allclose(objective_terms(MPF, model, configs),
                               np.sum(ratios ** -0.5, axis=1), rtol=1e-6)


def test_the_expected_gradient_vanishes_at_the_truth():
    # the consistency argument of the module's docstring, checked exactly: the gradient of
    # Σ_x p(x) ℓ(x; θ) over every configuration of the 3-unit model vanishes at the truth (to
    # float32 rounding, 1e-7), and not at a point 0.1 away
    model = CASES["bm3"][0]
    configs = model.support.enumerate()
    terms = MPF.build(model, resample=False).terms
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
def test_mpf_recovers_the_truth_and_the_exact_mle(case):
    truth, start, n = CASES[case]
    data = exact_draws(truth, n, seed=11)
    fit = un.fit(start, data, "mpf", key=jax.random.key(0), progress_bar=False)
    # convex for energies linear in θ: Newton from the initial values
    assert fit.method == "newton" and fit.converged
    mle = exact_mle(start, data)
    for name, value in truth.params.items():
        se = fit.stderr[name]
        z_truth = (fit.params[name] - np.asarray(value)) / se
        assert np.max(np.abs(z_truth)) < 4, (name, z_truth)
        # Var(θ̂_MPF - θ̂_MLE) = Var θ̂_MPF - Var θ̂_MLE ≤ SE² (Hausman 1978: the MLE is
        # efficient), so 3 SE is at least a 3σ bound
        z_mle = (fit.params[name] - mle[name]) / se
        assert np.max(np.abs(z_mle)) < 3, (name, z_mle)


def test_mpf_refuses_continuous_data():
    with pytest.raises(ValueError, match=r"'mpf' \(minimum probability flow\) needs a binary or "
                                         r"spin support; the model's support is real\(d=\(2,\)\)"):
        un.fit(un.models.gaussian(2), np.zeros((4, 2)), "mpf", key=jax.random.key(0))
