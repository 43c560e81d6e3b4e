"""Exact draws and exact maximum-likelihood estimates for small discrete models, by
enumeration: the truth the estimator tests use."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from unnorm import models
from unnorm.estimators import Batch
from unnorm.model import energies
from unnorm.partition import log_partition


def exact_draws(model, n: int, seed: int, params=None) -> np.ndarray:
    """``n`` i.i.d. draws of ``p(x) ∝ exp(-E(x; params))`` over every configuration of the
    model's binary or spin support (default ``model.params``)."""
    params = model.params if params is None else params
    configs = np.asarray(model.support.enumerate())
    # one compiled program per model (shared by models built alike), not one per operation
    values = np.asarray(energies(model, params, configs), dtype=float)
    weights = np.exp(-(values - values.min()))
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
    configs = np.asarray(model.support.enumerate())
    size = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(model.params))
    E0, G = (np.asarray(a, dtype=float)
             for a in _energies_and_gradients(np.zeros(size, np.float32), configs, model=model))
    _, G1 = _energies_and_gradients(np.ones(size, np.float32), configs, model=model)
    if not np.allclose(G, np.asarray(G1), atol=1e-5):
        raise ValueError("exact_mle needs an energy affine in the parameters")
    # each observation is one of the configurations: its row of (E0, G) by lookup
    row = {tuple(c): i for i, c in enumerate(configs.tolist())}
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

    theta = np.zeros(size)
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


@functools.partial(jax.jit, static_argnames="model")
def _energies_and_gradients(flat, configs, *, model):
    """``E(x; θ)`` and ``∇_θ E(x; θ)`` for each row ``x`` of ``configs``, with ``θ`` the flat
    vector ``flat`` in ``ravel_pytree``'s order of ``model.params``: one compiled program per
    model (and models built alike share it), where the same computation run outside jit
    compiled each of its operations on its own."""
    unravel = ravel_pytree(model.params)[1]

    def energy(theta, x):
        return model.energy(unravel(theta), x)

    return jax.vmap(jax.value_and_grad(energy), (None, 0))(flat, configs)


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
    # NumPy parameters: the models cast them on the host, where JAX arrays would be converted
    # by a compiled program each
    return {
        "bm3": (models.ising(J=np.array([-1.0, -1.0, 2.0]), h=np.array([0.0, 1.0, 0.0])),
                models.ising(J=np.zeros(3), h=np.zeros(3)), 30_000),
        "bm3_binary": (models.boltzmann(W=np.array([-1.0, -1.0, 2.0]),
                                        b=np.array([0.0, 1.0, 0.0])),
                       models.boltzmann(W=np.zeros(3), b=np.zeros(3)), 5000),
        "chain10": (models.ising_chain(10, coupling=0.4, field=0.2),
                    models.ising_chain(10, coupling=0.0, field=0.0), 5000),
        "ising10": (models.ising(J=chain_couplings, h=np.full(10, 0.2)),
                    models.ising(J=np.zeros(45), h=np.zeros(10)), 5000),
    }


def objective_terms(estimator, model, xs, params=None) -> np.ndarray:
    """The per-observation terms of ``estimator`` bound to ``model`` at ``params`` (default
    ``model.params``) for the rows ``xs``, after checking that the loss is their mean."""
    params = model.params if params is None else params
    terms, loss = _terms_and_loss(params, np.asarray(xs, dtype=np.float32),
                                  estimator=estimator, model=model)
    terms = np.asarray(terms, dtype=float)
    np.testing.assert_allclose(float(loss), np.mean(terms), rtol=1e-6)
    return terms


@functools.partial(jax.jit, static_argnames=("estimator", "model"))
def _terms_and_loss(params, xs, *, estimator, model):
    """The per-observation terms and the loss of ``estimator`` bound to ``model`` at the rows
    ``xs``, as a fit evaluates them: one compiled program per estimator, model and shape, where
    the objective run outside jit compiled each of its operations on its own."""
    objective = estimator.build(model, resample=False)
    batch = Batch(xs, jnp.arange(xs.shape[0]))
    state = objective.init(params, jax.random.key(0), xs)
    terms = objective.terms(params, state, batch, jax.random.key(0))
    loss, _ = objective.loss(params, state, batch, jax.random.key(0))
    return terms, loss


def flip_probability_ratios(model) -> tuple[np.ndarray, np.ndarray]:
    """Every configuration ``x`` of a binary or spin model (rows) and, for each coordinate
    ``j``, ``p(x) / p(x^(j))`` from the normalized probabilities (``log Z`` by enumeration):
    the ratios the partition-free estimators are written in, computed without cancelling Z."""
    configs = np.asarray(model.support.enumerate(), dtype=float)
    # one compiled program per model, not one per operation
    values = np.asarray(energies(model, model.params, configs.astype(np.float32)), dtype=float)
    prob = np.exp(-values - log_partition(model, method="exact").estimate)
    index = {tuple(c): i for i, c in enumerate(configs.tolist())}
    low, high = model.support.values
    ratios = np.empty(configs.shape)
    for i, x in enumerate(configs.tolist()):
        for j in range(len(x)):
            flipped = list(x)
            flipped[j] = low + high - x[j]
            ratios[i, j] = prob[i] / prob[index[tuple(flipped)]]
    return configs, ratios
