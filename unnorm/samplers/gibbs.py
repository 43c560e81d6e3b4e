"""Single-site Gibbs sampling for binary and spin supports, in the BlackJAX shape.

One step is a systematic sweep over every coordinate (seed 001, "Gibbs sampling": each update
uses the values just drawn). The conditional of coordinate i comes from an energy difference,
so it holds for ANY energy on {a, b}^d, not only pairwise ones (seed 001's derivation of
p(x_0 = 1 | x_1, x_2)):

    p(x_i = x̃_i | x_-i) = σ(E(x) - E(x̃)),        x̃ = x with coordinate i flipped,

σ the logistic function. The current log-density is carried along, so each site costs one energy
evaluation. A non-finite energy difference leaves the site unchanged and flags the sweep
``is_divergent``.

Example
-------
>>> import jax, jax.numpy as jnp
>>> from unnorm.samplers import gibbs
>>> logdensity = lambda x: 0.5 * x[0] * x[1]          # two coupled spins
>>> state = gibbs.init(jnp.array([1.0, -1.0]), logdensity)
>>> state, info = gibbs.step(jax.random.key(0), state, logdensity, values=(-1.0, 1.0))
>>> bool(jnp.all(jnp.abs(state.position) == 1.0))
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["GibbsState", "GibbsInfo", "init", "step"]


class GibbsState(NamedTuple):
    position: jax.Array
    logdensity: jax.Array


class GibbsInfo(NamedTuple):
    """``acceptance_rate`` is 1 (Gibbs moves are always accepted); ``flip_rate`` is the fraction
    of coordinates whose value changed in the sweep."""

    acceptance_rate: jax.Array
    flip_rate: jax.Array
    is_divergent: jax.Array


def init(position: jax.Array, logdensity_fn: Callable) -> GibbsState:
    """Start a chain at ``position`` (values in ``values``)."""
    return GibbsState(position, logdensity_fn(position))


def step(
    key,
    state: GibbsState,
    logdensity_fn: Callable,
    values: tuple[float, float] = (0.0, 1.0),
    unroll: int | bool = 1,
) -> tuple[GibbsState, GibbsInfo]:
    """One systematic-scan sweep over all coordinates.

    Parameters
    ----------
    values : (float, float)
        The two values a coordinate takes: (0, 1) for binary, (-1, 1) for spin.
    unroll : int or bool
        Passed to ``lax.scan`` over the sites: unrolling trades compile time for speed.
    """
    shape = state.position.shape
    size = state.position.size
    low, high = values
    flat = state.position.ravel()
    sites = jnp.arange(size)
    log_uniforms = jnp.log(jax.random.uniform(key, (size,)))
    # Every array operation below is elementwise over the whole vector or a reduction inside
    # ``logdensity_fn``: site i is selected with the mask ``sites == i`` rather than with
    # ``flat[i]`` / ``flat.at[i].set``. Under ``vmap`` over chains, indexing at a loop index
    # becomes gather/scatter, which XLA's CPU backend runs far slower than masked selects that
    # fuse into the energy evaluation (benchmarks/README.md).

    def update_site(carry, site):
        flat, logdensity, flips, divergent = carry
        i, log_uniform = site
        at_site = sites == i
        other = jnp.where(flat == high, low, high).astype(flat.dtype)
        proposal = jnp.where(at_site, other, flat)
        proposal_logdensity = logdensity_fn(proposal.reshape(shape))
        delta = proposal_logdensity - logdensity
        finite = jnp.isfinite(delta)
        # log σ(δ) = -softplus(-δ): the exact conditional probability of the flipped value.
        flip = finite & (log_uniform < -jax.nn.softplus(-delta))
        carry = (
            jnp.where(flip & at_site, other, flat),
            jnp.where(flip, proposal_logdensity, logdensity),
            flips + flip,
            divergent | ~finite,
        )
        return carry, None

    carry = (flat, state.logdensity, jnp.zeros((), jnp.int32), jnp.array(False))
    (flat, logdensity, flips, divergent), _ = jax.lax.scan(
        update_site, carry, (sites, log_uniforms), unroll=unroll
    )
    info = GibbsInfo(jnp.ones(()), flips / size, divergent)
    return GibbsState(flat.reshape(shape), logdensity), info
