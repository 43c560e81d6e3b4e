"""Langevin kernels: unadjusted (ULA) and Metropolis-adjusted (MALA), in the BlackJAX shape.

One step follows Song & Kingma 2021, eq. 6 (also Amaires' note, Algorithm 2):

    x' = x + (ε² / 2) ∇_x log p(x) + ε z,        z ~ N(0, I),

with ``step_size`` = ε and ``∇_x log p = -∇_x E`` (eq. 5). MALA (Besag 1994; Song & Kingma 2021,
§3) accepts
x' with probability ``min(1, p(x') q(x | x') / (p(x) q(x' | x)))`` where
``q(x' | x) = N(x'; x + (ε²/2) ∇ log p(x), ε² I)``. BlackJAX's MALA writes the same step with
``τ = ε² / 2``.

Both kernels take the log-density as an argument of every step, so they run inside a training
loop whose parameters change without recompiling. A proposal whose log-density or gradient is
not finite is rejected and flagged ``is_divergent``.

Example
-------
>>> import jax, jax.numpy as jnp
>>> from unnorm.samplers import langevin
>>> logdensity = lambda x: -0.5 * jnp.sum(x**2)
>>> state = langevin.init(jnp.zeros(2), logdensity)
>>> state, info = langevin.mala_step(jax.random.key(0), state, logdensity, 0.5)
>>> state.position.shape
(2,)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import threefry
from .adaptation import adaptive_kernel
from .draws import noise_and_uniform
from .spec import SamplerSpec, option_checks

__all__ = ["LangevinState", "LangevinInfo", "init", "mala_step", "ula_step", "MALA", "ULA"]


class LangevinState(NamedTuple):
    """Position with its log-density and gradient (so each step costs one gradient call)."""

    position: jax.Array
    logdensity: jax.Array
    logdensity_grad: jax.Array


class LangevinInfo(NamedTuple):
    """What one step did. For ULA ``acceptance_rate`` is the MALA acceptance the step *would*
    have had: a diagnostic of discretization error, used to tune ε during warmup."""

    acceptance_rate: jax.Array
    is_accepted: jax.Array
    is_divergent: jax.Array


def init(position: jax.Array, logdensity_fn: Callable) -> LangevinState:
    """Start a chain at ``position``."""
    logdensity, grad = jax.value_and_grad(logdensity_fn)(position)
    return LangevinState(position, logdensity, grad)


def _log_proposal(to: jax.Array, frm: jax.Array, frm_grad: jax.Array, step_size) -> jax.Array:
    """log q(to | frm) up to a constant shared by forward and reverse moves."""
    mean = frm + 0.5 * step_size**2 * frm_grad
    return -0.5 * jnp.sum((to - mean) ** 2) / step_size**2


def _propose(noise: jax.Array, state: LangevinState, logdensity_fn: Callable, step_size):
    position = state.position + 0.5 * step_size**2 * state.logdensity_grad + step_size * noise
    logdensity, grad = jax.value_and_grad(logdensity_fn)(position)
    proposal = LangevinState(position, logdensity, grad)
    log_ratio = (
        logdensity
        - state.logdensity
        + _log_proposal(state.position, position, grad, step_size)
        - _log_proposal(position, state.position, state.logdensity_grad, step_size)
    )
    # The ratio involves the proposal's position, log-density and gradient: it is finite exactly
    # when all three are (the current state is), so one scalar test guards the whole move.
    finite = jnp.isfinite(log_ratio)
    acceptance = jnp.where(finite, jnp.exp(jnp.minimum(log_ratio, 0.0)), 0.0)
    return proposal, finite, log_ratio, acceptance


def _select(accept, new: LangevinState, old: LangevinState) -> LangevinState:
    return jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, old)


def mala_step(
    key, state: LangevinState, logdensity_fn: Callable, step_size
) -> tuple[LangevinState, LangevinInfo]:
    """One Metropolis-adjusted Langevin step (eq. 6 plus a Metropolis–Hastings correction)."""
    noise, uniform = noise_and_uniform(key, state.position.shape, state.position.dtype)
    proposal, finite, log_ratio, acceptance = _propose(
        noise, state, logdensity_fn, step_size
    )
    accept = finite & (jnp.log(uniform) < log_ratio)
    return _select(accept, proposal, state), LangevinInfo(acceptance, accept, ~finite)


def ula_step(
    key, state: LangevinState, logdensity_fn: Callable, step_size
) -> tuple[LangevinState, LangevinInfo]:
    """One unadjusted Langevin step (eq. 6): always moves, unless the move is not finite."""
    noise = threefry.normal(key, state.position.shape, state.position.dtype)
    proposal, finite, _, acceptance = _propose(noise, state, logdensity_fn, step_size)
    return _select(finite, proposal, state), LangevinInfo(acceptance, finite, ~finite)


#: ``chain_block``: None runs each group of chains as one vectorized computation; a width W runs
#: them in blocks of W (:mod:`unnorm.samplers.chain_blocks`)
_DEFAULTS = {"step_size": 0.1, "target_accept": 0.574, "adapt_step_size": True,
             "chain_block": None}

#: ``sampler="mala"``: Metropolis-adjusted Langevin
MALA = SamplerSpec(
    name="mala", description="Metropolis-adjusted Langevin", discrete=False, uses_gradient=True,
    defaults=_DEFAULTS, checks=option_checks(_DEFAULTS),
    build=lambda tuning, num_warmup, values: adaptive_kernel("mala", True, init, mala_step,
                                                             tuning),
    thinning=4)

_ULA_DEFAULTS = {**_DEFAULTS, "target_accept": 0.99}

#: ``sampler="langevin"``: unadjusted Langevin. Its step size is tuned towards the acceptance
#: MALA would have (0.99), which keeps the discretization bias small.
ULA = SamplerSpec(
    name="langevin", description="unadjusted Langevin (ULA)", discrete=False,
    uses_gradient=True, defaults=_ULA_DEFAULTS, checks=option_checks(_ULA_DEFAULTS),
    build=lambda tuning, num_warmup, values: adaptive_kernel("langevin", True, init, ula_step,
                                                             tuning),
    thinning=10)
