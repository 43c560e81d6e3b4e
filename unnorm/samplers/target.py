"""What a chain targets: the model's log-density in the unconstrained space, and the map back.

Continuous supports are sampled in an unconstrained space: with ``x = T(u)`` and ``T`` NumPyro's
``biject_to(support)``, a chain targets ``log p(u) = -E(T(u); θ) + log|det ∂T/∂u|``; binary and
spin supports are sampled as they are. Every chain loop of the library (``un.sample``, the
chain-based estimators, annealed importance sampling) builds its target here.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from ..model import Model

__all__ = ["unconstrained_logdensity", "to_position"]


def unconstrained_logdensity(model: Model, params) -> Callable[..., jax.Array]:
    """The log-density a kernel targets: ``-E(T(u)) + log|det J_T(u)|`` (continuous supports)
    or ``-E(x)`` (discrete supports), up to the constant ``-log Z``.

    The function takes an optional noise ``level``, ``logdensity(u, level)``, which a
    noise-conditional energy is told as ``sigma`` (annealed samplers); the other kernels call
    ``logdensity(u)``."""
    support = model.support
    if support.is_discrete:
        return lambda x, level=None: -model.energy(params, x, level)
    transform = support.transform

    def logdensity(u, level=None):
        x = transform(u)
        return -model.energy(params, x, level) + transform.log_abs_det_jacobian(u, x)

    return logdensity


def to_position(model: Model, u: jax.Array) -> jax.Array:
    """The point ``x = T(u)`` of the model's support (``u`` itself on discrete supports)."""
    return u if model.support.is_discrete else model.support.transform(u)
