"""Step-size adaptation during warmup: dual averaging towards a target acceptance rate.

Nesterov's dual averaging as tuned for MCMC by Hoffman & Gelman (2014, §3.2); the update itself
is NumPyro's ``numpyro.infer.hmc_util.dual_averaging`` (not re-implemented here). Each chain
adapts its own step size; at the end of warmup the step size becomes the averaged iterate.

Example
-------
>>> import jax, jax.numpy as jnp
>>> from unnorm.samplers import adaptation, langevin
>>> logdensity = lambda x: -0.5 * jnp.sum(x**2)
>>> init, step, finalize = adaptation.step_size_adaptation(
...     langevin.mala_step, target_accept=0.574, initial_step_size=0.1)
>>> state = init(langevin.init(jnp.zeros(2), logdensity))
>>> state, info = step(jax.random.key(0), state, logdensity, adapting=True)
>>> float(finalize(state).step_size) > 0
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from numpyro.infer.hmc_util import dual_averaging

from .spec import Kernel

__all__ = ["AdaptiveState", "adaptive_kernel", "step_size_adaptation"]


class AdaptiveState(NamedTuple):
    """A kernel's state together with its step size and dual-averaging state."""

    kernel: Any
    step_size: jax.Array
    dual_averaging: Any


def step_size_adaptation(
    kernel_step: Callable,
    target_accept: float,
    initial_step_size: float,
    adapt: bool = True,
) -> tuple[Callable, Callable, Callable]:
    """Wrap ``kernel_step(key, state, logdensity_fn, step_size)`` with step-size adaptation.

    Returns
    -------
    init(kernel_state) -> AdaptiveState
    step(key, state, logdensity_fn, adapting=True) -> (AdaptiveState, info)
        adapts when ``adapt`` and ``adapting`` (a bool, possibly traced); with
        ``adapting=False`` the step size is held fixed
    finalize(state) -> AdaptiveState
        fixes the final step size (the averaged iterate)
    """
    da_init, da_update = dual_averaging()

    def init(kernel_state) -> AdaptiveState:
        step_size = jnp.asarray(initial_step_size, dtype=float)
        # Hoffman & Gelman centre the iterates on log(10 ε₀): large steps are tried early.
        return AdaptiveState(kernel_state, step_size, da_init(jnp.log(10.0 * step_size)))

    def step(key, state: AdaptiveState, logdensity_fn: Callable, adapting=True):
        kernel_state, info = kernel_step(key, state.kernel, logdensity_fn, state.step_size)
        if not adapt:
            return state._replace(kernel=kernel_state), info
        da_state = da_update(target_accept - info.acceptance_rate, state.dual_averaging)
        adapted = AdaptiveState(kernel_state, jnp.exp(da_state[0]), da_state)
        # ``adapting`` may be traced: one compiled step then serves warmup and sampling.
        return jax.tree_util.tree_map(
            lambda new, old: jnp.where(adapting, new, old), adapted,
            state._replace(kernel=kernel_state),
        ), info

    def finalize(state: AdaptiveState) -> AdaptiveState:
        if not adapt:
            return state
        # Before any warmup step the averaged iterate is still 0 (t = 0): keep the step size.
        averaged = jnp.where(state.dual_averaging[3] > 0, jnp.exp(state.dual_averaging[1]),
                             state.step_size)
        return state._replace(step_size=averaged)

    return init, step, finalize


def adaptive_kernel(name: str, uses_gradient: bool, kernel_init: Callable,
                    kernel_step: Callable, tuning: dict) -> Kernel:
    """The :class:`~unnorm.samplers.spec.Kernel` of a kernel with one step size
    (``kernel_step(key, state, logdensity_fn, step_size)``: MALA, ULA, random-walk Metropolis),
    adapted by dual averaging during warmup (``tuning``: ``step_size``, ``target_accept``,
    ``adapt_step_size``, and the width of the blocks of chains, ``chain_block``, where the
    sampler takes it)."""
    init_adapt, step, finalize = step_size_adaptation(
        kernel_step,
        target_accept=tuning["target_accept"],
        initial_step_size=tuning["step_size"],
        adapt=tuning["adapt_step_size"],
    )

    def init(position, logdensity_fn, key):
        return init_adapt(kernel_init(position, logdensity_fn))

    def stats(state, info):
        return {
            "acceptance_rate": info.acceptance_rate,
            "diverging": info.is_divergent,
            "step_size": state.step_size,
        }

    def refresh(state, logdensity_fn, position=None):
        position = state.kernel.position if position is None else position
        return state._replace(kernel=kernel_init(position, logdensity_fn))

    return Kernel(
        name, False, uses_gradient, init, step, finalize,
        position=lambda state: state.kernel.position,
        logdensity=lambda state: state.kernel.logdensity,
        stats=stats,
        refresh=refresh,
        get_step_size=lambda state: state.step_size,
        set_step_size=lambda state, value: state._replace(step_size=value),
        chain_block=tuning.get("chain_block"),
    )
