"""Random-walk Metropolis–Hastings in the BlackJAX shape (Amini's lecture notes, Algorithm 1;
Amaires' note,
Algorithm 1).

A Gaussian proposal ``x' = x + ε z`` with ``step_size`` = ε, accepted with probability
``min(1, exp(log p(x') - log p(x)))``: only energies are needed, no gradients. Non-finite
proposals are rejected and flagged ``is_divergent``.

Example
-------
>>> import jax, jax.numpy as jnp
>>> from unnorm.samplers import rwmh
>>> logdensity = lambda x: -0.5 * jnp.sum(x**2)
>>> state = rwmh.init(jnp.zeros(2), logdensity)
>>> state, info = rwmh.step(jax.random.key(0), state, logdensity, 1.0)
>>> info.acceptance_rate.shape
()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .adaptation import adaptive_kernel
from .draws import noise_and_uniform
from .spec import SamplerSpec, option_checks

__all__ = ["RWMHState", "RWMHInfo", "init", "step", "RWMH"]


class RWMHState(NamedTuple):
    position: jax.Array
    logdensity: jax.Array


class RWMHInfo(NamedTuple):
    acceptance_rate: jax.Array
    is_accepted: jax.Array
    is_divergent: jax.Array


def init(position: jax.Array, logdensity_fn: Callable) -> RWMHState:
    """Start a chain at ``position``."""
    return RWMHState(position, logdensity_fn(position))


def step(key, state: RWMHState, logdensity_fn: Callable, step_size) -> tuple[RWMHState, RWMHInfo]:
    """One Metropolis step with an isotropic Gaussian proposal of scale ``step_size``."""
    noise, uniform = noise_and_uniform(key, state.position.shape, state.position.dtype)
    position = state.position + step_size * noise
    logdensity = logdensity_fn(position)
    finite = jnp.isfinite(logdensity) & jnp.all(jnp.isfinite(position))
    log_ratio = logdensity - state.logdensity
    acceptance = jnp.where(finite, jnp.exp(jnp.minimum(log_ratio, 0.0)), 0.0)
    accept = finite & (jnp.log(uniform) < log_ratio)
    new = RWMHState(
        jnp.where(accept, position, state.position),
        jnp.where(accept, logdensity, state.logdensity),
    )
    return new, RWMHInfo(acceptance, accept, ~finite)


_DEFAULTS = {"step_size": 0.5, "target_accept": 0.234, "adapt_step_size": True}

#: ``sampler="rwmh"``
RWMH = SamplerSpec(
    name="rwmh", description="random-walk Metropolis-Hastings", discrete=False,
    uses_gradient=False, defaults=_DEFAULTS, checks=option_checks(_DEFAULTS),
    build=lambda tuning, num_warmup, values: adaptive_kernel("rwmh", False, init, step, tuning),
    thinning=5)
