"""Pseudo-likelihood on discrete models, against exact draws from enumeration and the exact
maximum-likelihood estimate."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from _exact import exact_draws, exact_mle, pairwise_cases

import unnorm as un

D = 5
N = 3000


@pytest.mark.parametrize("kind", ["ising", "boltzmann"])
def test_pseudo_likelihood_recovers_pairwise_models(kind):
    rng = np.random.default_rng(7)
    couplings = rng.normal(scale=0.5, size=D * (D - 1) // 2)
    fields = rng.normal(scale=0.3, size=D)
    build = un.models.ising if kind == "ising" else un.models.boltzmann
    truth = build(couplings, fields)
    data = exact_draws(truth, N, seed=8)
    start = build(np.zeros_like(couplings), np.zeros(D))
    fit = un.fit(start, data, "pl", key=jax.random.key(0), progress_bar=False)
    assert fit.method in ("newton", "optimizer + newton") and fit.converged
    for name, value in truth.params.items():
        z = (fit.params[name] - np.asarray(value)) / fit.stderr[name]
        assert np.max(np.abs(z)) < 4, (name, z)


# the general 10-spin model with the long studies (-m slow); the chain and the machine by default
@pytest.mark.parametrize("case", ["bm3", "chain10",
                                  pytest.param("ising10", marks=pytest.mark.slow)])
def test_pseudo_likelihood_agrees_with_the_exact_mle(case):
    truth, start, n = pairwise_cases()[case]
    data = exact_draws(truth, n, seed=11)
    fit = un.fit(start, data, "pl", key=jax.random.key(0), progress_bar=False)
    mle = exact_mle(start, data)
    for name in truth.params:
        # Var(θ̂_PL - θ̂_MLE) = Var θ̂_PL - Var θ̂_MLE ≤ SE² (Hausman 1978: the MLE is
        # efficient), so 3 SE is at least a 3σ bound
        z = (fit.params[name] - mle[name]) / fit.stderr[name]
        assert np.max(np.abs(z)) < 3, (name, z)


def test_pseudo_likelihood_refuses_continuous_data():
    with pytest.raises(ValueError, match=r"'pl' \(pseudo-likelihood\) needs a binary or spin"):
        un.fit(un.models.gaussian(2), np.zeros((4, 2)), "pl", key=jax.random.key(0))
