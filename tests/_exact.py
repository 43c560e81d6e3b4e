"""Exact draws and exact maximum-likelihood estimates for small discrete models, by
enumeration: the truth the estimator tests use."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from unnorm import models
from unnorm.estimators import Batch
from unnorm.partition import log_partition


def exact_draws(model, n: int, seed: int, params=None) -> np.ndarray:
    """``n`` i.i.d. draws of ``p(x) ∝ exp(-E(x; params))`` over every configuration of the
    model's binary or spin support (default ``model.params``)."""
    params = model.params if params is None else params
    configs = np.asarray(model.support.enumerate())
    energies = np.asarray(jax.vmap(lambda x: model.energy(params, x))(jnp.asarray(configs)),
                          dtype=float)
    weights = np.exp(-(energies - energies.min()))
    rows = np.random.default_rng(seed).choice(len(configs), size=n, p=weights / weights.sum())
    return configs[rows]


def exact_mle(model, data) -> dict:
    """The maximum-likelihood estimate of the parameters of ``model`` (an energy affine in θ:
    an exponential family such as the Ising and Boltzmann models) from ``data``.

    With ``E(x; θ) = E(x; 0) + G(x)·θ``, the mean negative log-likelihood
    ``mean_i E(x_i; θ) + logsumexp_x(-E(x; θ))`` over every configuration is convex in θ; it is
    minimized by Newton's method in float64 NumPy, so the reference is exact to ~1e-10, far
    below the float32 rounding of the fits it is compared with.
    """
    flat0, unravel = ravel_pytree(model.params)
    configs = jnp.asarray(model.support.enumerate())

    def energy(flat, x):
        return model.energy(unravel(flat), x)

    gradient = jax.vmap(jax.grad(energy), (None, 0))
    G = np.asarray(gradient(jnp.zeros_like(flat0), configs), dtype=float)
    if not np.allclose(G, np.asarray(gradient(jnp.ones_like(flat0), configs)), atol=1e-5):
        raise ValueError("exact_mle needs an energy affine in the parameters")
    E0 = np.asarray(jax.vmap(lambda x: energy(jnp.zeros_like(flat0), x))(configs), dtype=float)
    # each observation is one of the configurations: its row of (E0, G) by lookup
    row = {tuple(c): i for i, c in enumerate(np.asarray(configs).tolist())}
    index = np.array([row[tuple(x)] for x in np.asarray(data, dtype=float).tolist()])
    counts = np.bincount(index, minlength=len(E0)) / len(index)

    def negative_log_likelihood(theta):
        logits = -(E0 + G @ theta)
        log_z = np.logaddexp.reduce(logits)
        p = np.exp(logits - log_z)
        value = counts @ (E0 + G @ theta) + log_z
        grad = counts @ G - p @ G
        centred = G - p @ G
        return value, grad, (centred * p[:, None]).T @ centred

    theta = np.zeros(flat0.size)
    for _ in range(100):
        value, grad, hessian = negative_log_likelihood(theta)
        step = np.linalg.solve(hessian, grad)
        if np.max(np.abs(step)) < 1e-12:
            break
        decrement, size = grad @ step, 1.0
        # backtrack while far from the minimum; near it (decrement below 1e-10) full Newton
        # steps converge quadratically, and a line search would only fight float64 rounding
        while decrement > 1e-10 and size > 1e-10:
            if negative_log_likelihood(theta - size * step)[0] <= value - 1e-4 * size * decrement:
                break
            size /= 2
        theta = theta - size * step
    else:
        raise RuntimeError("Newton's method did not converge on the exact log-likelihood")
    # unflattened in NumPy (ravel_pytree's order: sorted names, each leaf raveled), keeping
    # float64 where jax would round to float32
    estimate, offset = {}, 0
    for name in sorted(model.params):
        shape = np.shape(model.params[name])
        size = int(np.prod(shape))
        estimate[name] = theta[offset:offset + size].reshape(shape)
        offset += size
    return estimate


def pairwise_cases() -> dict:
    """The binary and spin models the partition-free estimators are tested on: name ->
    ``(truth, start, n)``, the start at zero parameters and ``n`` the sample size to draw.

    * ``bm3``: the three-unit Boltzmann machine of docs/partition.md (spins; couplings
      J12 = J13 = -1, J23 = 2, field h2 = 1, Z = 172.420). It is strongly peaked: two states
      hold 98% of the mass and two others 2.9e-4 each. At n = 5000 each of those is unseen in
      a quarter of the data sets and both in 6%, where the MLE does not exist (PL and MPF then
      run off towards infinity as well); n = 30000 sees each about 8.6 times, and misses one
      in 0.04% of data sets;
    * ``bm3_binary``: the same parameters on {0, 1} units (``boltzmann``), the other flip; its
      rarest state has probability 1.2%;
    * ``chain10``: a 10-spin open Ising chain, coupling 0.4 and field 0.2, two parameters;
    * ``ising10``: the general 10-spin Ising model (45 couplings, 10 fields) with the chain's
      parameters as its truth: couplings 0.4 between neighbours and 0 elsewhere.
    """
    rows, cols = models.pair_indices(10)
    chain_couplings = np.where(cols == rows + 1, 0.4, 0.0)
    return {
        "bm3": (models.ising(J=jnp.array([-1.0, -1.0, 2.0]), h=jnp.array([0.0, 1.0, 0.0])),
                models.ising(J=jnp.zeros(3), h=jnp.zeros(3)), 30_000),
        "bm3_binary": (models.boltzmann(W=jnp.array([-1.0, -1.0, 2.0]),
                                        b=jnp.array([0.0, 1.0, 0.0])),
                       models.boltzmann(W=jnp.zeros(3), b=jnp.zeros(3)), 5000),
        "chain10": (models.ising_chain(10, coupling=0.4, field=0.2),
                    models.ising_chain(10, coupling=0.0, field=0.0), 5000),
        "ising10": (models.ising(J=chain_couplings, h=np.full(10, 0.2)),
                    models.ising(J=np.zeros(45), h=np.zeros(10)), 5000),
    }


def objective_terms(estimator, model, xs, params=None) -> np.ndarray:
    """The per-observation terms of ``estimator`` bound to ``model`` at ``params`` (default
    ``model.params``) for the rows ``xs``, after checking that the loss is their mean."""
    params = model.params if params is None else params
    objective = estimator.build(model, resample=False)
    xs = jnp.asarray(xs, dtype=jnp.float32)
    batch = Batch(xs, jnp.arange(xs.shape[0]))
    state = objective.init(params, jax.random.key(0), xs)
    terms = objective.terms(params, state, batch, jax.random.key(0))
    loss, _ = objective.loss(params, state, batch, jax.random.key(0))
    np.testing.assert_allclose(float(loss), float(jnp.mean(terms)), rtol=1e-6)
    return np.asarray(terms, dtype=float)


def flip_probability_ratios(model) -> tuple[np.ndarray, np.ndarray]:
    """Every configuration ``x`` of a binary or spin model (rows) and, for each coordinate
    ``j``, ``p(x) / p(x^(j))`` from the normalized probabilities (``log Z`` by enumeration):
    the ratios the partition-free estimators are written in, computed without cancelling Z."""
    configs = np.asarray(model.support.enumerate(), dtype=float)
    energies = np.asarray(jax.vmap(lambda x: model.energy(model.params, x))(configs),
                          dtype=float)
    prob = np.exp(-energies - log_partition(model, method="exact").estimate)
    index = {tuple(c): i for i, c in enumerate(configs.tolist())}
    low, high = model.support.values
    ratios = np.empty(configs.shape)
    for i, x in enumerate(configs.tolist()):
        for j in range(len(x)):
            flipped = list(x)
            flipped[j] = low + high - x[j]
            ratios[i, j] = prob[i] / prob[index[tuple(flipped)]]
    return configs, ratios
