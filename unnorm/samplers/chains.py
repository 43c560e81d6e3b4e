"""The chain runner: every chain of a batch advanced by a kernel under a log-density.

One loop serves :func:`unnorm.sample` (its compiled chunks of draws) and the chain-based
estimators (CD, PCD and MLE run ``k`` steps per optimizer step under the current θ): chains are
vmapped, steps scanned, and the key of chain ``c`` at step ``t`` is ``fold_in(key_c, t)``, so a
chain's draws depend on neither how many chains run beside it nor how the steps are chunked.
It returns arrays; ArviZ is built only at the public edge (:mod:`unnorm.samplers.run`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .. import threefry
from .spec import Kernel

__all__ = ["advance", "start"]


def start(kernel: Kernel, positions: jax.Array, logdensity_fn: Callable, keys) -> Any:
    """The kernel's states of chains started at ``positions`` (unconstrained, one row per
    chain), one key per chain."""
    return jax.vmap(lambda u, key: kernel.init(u, logdensity_fn, key))(positions, keys)


def advance(kernel: Kernel, states, logdensity_fn: Callable, chain_keys, steps: jax.Array,
            warmup=False):
    """Advance every chain one kernel step per entry of ``steps`` (global step numbers).

    Parameters
    ----------
    kernel : Kernel
        The built sampler.
    states
        The chains' states, vmapped (leading axis: chain).
    logdensity_fn : callable
        The target, ``logdensity_fn(u)``; it may change between calls (θ moved) without
        recompiling, as long as it is traced the same way.
    chain_keys : key array (chains,)
        One key per chain; step ``t`` of chain ``c`` uses ``fold_in(chain_keys[c], t)``.
    steps : int array (k,)
        The global numbers of the ``k`` steps to take.
    warmup : bool
        Whether the kernels adapt during these steps (possibly traced).

    Returns
    -------
    states, infos
        The final states and every step's info, with leading axes (step, chain).

    Example
    -------
    >>> import jax, jax.numpy as jnp
    >>> from unnorm.samplers import build_sampler, chains
    >>> kernel = build_sampler("mala", num_warmup=0, step_size=0.5, adapt_step_size=False)
    >>> logdensity = lambda u: -0.5 * jnp.sum(u**2)
    >>> keys = jax.random.split(jax.random.key(0), 3)
    >>> states = chains.start(kernel, jnp.zeros((3, 2)), logdensity, keys)
    >>> states, infos = chains.advance(kernel, states, logdensity, keys, jnp.arange(10))
    >>> infos.acceptance_rate.shape
    (10, 3)
    """

    def one_step(states, step):
        keys = jax.vmap(lambda key: threefry.fold_in(key, step))(chain_keys)
        return jax.vmap(lambda key, state: kernel.step(key, state, logdensity_fn, warmup))(
            keys, states)

    steps = jnp.asarray(steps)
    if steps.shape[0] == 1:
        # one step (a draw without thinning): no loop around it for XLA to keep
        states, info = one_step(states, steps[0])
        return states, jax.tree_util.tree_map(lambda a: a[None], info)
    return jax.lax.scan(one_step, states, steps)
