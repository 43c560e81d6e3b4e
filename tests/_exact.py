"""Exact draws from small discrete models, by enumeration: the truth the estimator tests use."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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
