"""Gibbs sampling for binary and spin supports, in the BlackJAX shape.

:func:`step` (the sequential scan): one step is a systematic sweep over every coordinate
(Beigy's lecture slides, "Gibbs sampling": each update uses the values just drawn). The conditional
of
coordinate i comes from an energy difference, so it holds for ANY energy on {a, b}^d, not only
pairwise ones (Beigy's derivation of p(x_0 = 1 | x_1, x_2)):

    p(x_i = x̃_i | x_-i) = σ(E(x) - E(x̃)),        x̃ = x with coordinate i flipped,

σ the logistic function. The current log-density is carried along, so each site costs one energy
evaluation. A non-finite energy difference leaves the site unchanged and flags the sweep
``is_divergent``.

:func:`blocked_step` (the blocked, or chromatic, scan): given a colouring of the energy's
interaction graph (:mod:`unnorm.samplers.structure`), one step updates the sites of each colour
at once. Sites of one colour do not interact, so given the others they are independent, and each
is drawn from its exact conditional: a valid Gibbs sweep with one batched update per colour
instead of one energy evaluation per site in turn. For a multilinear energy the flip differences
of all sites come from one gradient, ``E(x_i = b) - E(x_i = a) = (b - a) ∂E/∂x_i``.

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
import numpy as np

from .. import _checks, threefry
from . import structure
from .spec import Kernel, SamplerSpec, option_checks

__all__ = ["GibbsState", "GibbsInfo", "init", "step", "blocked_step", "with_blocks", "GIBBS"]


class GibbsState(NamedTuple):
    position: jax.Array
    logdensity: jax.Array


class GibbsInfo(NamedTuple):
    """``acceptance_rate`` is 1 (Gibbs moves are always accepted); ``flip_rate`` is the fraction
    of coordinates whose value changed in the sweep."""

    acceptance_rate: jax.Array
    flip_rate: jax.Array
    is_divergent: jax.Array


def _uniforms(key, size: int) -> jax.Array:
    """One Uniform(0, 1) per site: the exact heat-bath draw needs one per spin and sweep.

    ``jax.random.uniform``'s draws in the classic (non-partitionable) counter layout, which
    hashes half as many counters (the layout matters only for sharding one draw across
    devices), computed by :mod:`unnorm.threefry`'s unrolled hash: 2.3× faster than
    ``jax.random.uniform`` in the same layout, 3.5× than in the default one, for 256 chains ×
    100 spins, where the random numbers were half the sweep (benchmarks/README.md). They are
    still 40 % of a blocked sweep: XLA's CPU backend fuses the hash into the code that uses its
    two words, and computes it once per word.
    """
    return threefry.uniform(key, (size,), partitionable=False)


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
    log_uniforms = jnp.log(_uniforms(key, size))
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


def blocked_step(
    key,
    state: GibbsState,
    logdensity_fn: Callable,
    colors: tuple[tuple[int, ...], ...],
    values: tuple[float, float] = (0.0, 1.0),
    multilinear: bool = False,
    unroll: int | bool = 1,
) -> tuple[GibbsState, GibbsInfo]:
    """One sweep of the blocked scan: the colours in turn, all sites of a colour at once.

    Parameters
    ----------
    colors : tuple of tuples of int
        A proper colouring of the interaction graph: flat site indices (C order), each site in
        exactly one colour, no two interacting sites in one colour. A static input, e.g.
        ``structure.greedy_coloring(adjacency)``; the sweep is exact only if it is right.
    values : (float, float)
        The two values a coordinate takes: (0, 1) for binary, (-1, 1) for spin.
    multilinear : bool
        The log-density is affine in every coordinate (zero Hessian diagonal): the flip
        differences then come from one gradient per colour instead of one log-density
        evaluation per site.
    unroll : int or bool
        Passed to ``lax.scan`` over the colours.
    """
    shape = state.position.shape
    size = state.position.size
    low, high = values
    flat = state.position.ravel()
    sites = jnp.arange(size)
    num_colors = len(colors)
    width = max(len(c) for c in colors)
    # (C, width) site indices, padded with -1 (matches no site) and a validity mask.
    index = np.full((num_colors, width), -1, dtype=np.int32)
    for k, color in enumerate(colors):
        index[k, : len(color)] = color
    masks = np.zeros((num_colors, size), dtype=bool)
    for k, color in enumerate(colors):
        masks[k, list(color)] = True
    uniforms = _uniforms(key, size)

    def flat_logdensity(z):
        return logdensity_fn(z.reshape(shape))

    if multilinear:
        def update(carry, mask):
            flat, bad = carry
            slope = jax.grad(flat_logdensity)(flat)
            finite = jnp.isfinite(slope)
            # log p(x_i = high | rest) - log p(x_i = low | rest) = (high - low) ∂_i log p.
            p_high = jax.nn.sigmoid((high - low) * slope)
            new = jnp.where(uniforms < p_high, high, low).astype(flat.dtype)
            # Non-finite sites are collected elementwise and flips counted at the end of the
            # sweep: one reduction per sweep instead of two per colour.
            return (jnp.where(mask & finite, new, flat), bad | (mask & ~finite)), None

        xs = masks
        carry = (flat, jnp.zeros(size, bool))
    else:
        def update(carry, idx):
            flat, divergent = carry
            other = jnp.where(flat == high, low, high).astype(flat.dtype)
            at = sites[None, :] == idx[:, None]                       # (width, size)
            proposals = jnp.where(at, other[None, :], flat[None, :])
            points = jnp.concatenate([flat[None, :], proposals])
            logdensities = jax.vmap(flat_logdensity)(points)
            delta = logdensities[1:] - logdensities[0]
            valid = idx >= 0
            finite = jnp.isfinite(delta)
            u = jnp.sum(jnp.where(at, uniforms[None, :], 0.0), axis=1)
            # log σ(δ) = -softplus(-δ): the exact conditional probability of the flipped value.
            flip = valid & finite & (jnp.log(u) < -jax.nn.softplus(-delta))
            flipped = jnp.any(at & flip[:, None], axis=0)
            return (jnp.where(flipped, other, flat), divergent | jnp.any(valid & ~finite)), None

        xs = index
        carry = (flat, jnp.array(False))

    # A scan even over two colours: unrolled, XLA's CPU backend fused the colours' updates into
    # one loop that ran 2× slower at 256 chains × 100 spins (benchmarks/README.md).
    (updated, divergent), _ = jax.lax.scan(update, carry, xs, unroll=unroll)
    # Every site is in exactly one colour, so it changed in the sweep iff it differs at the end.
    # A changed site differs by ±(high - low): the count is a sum of squares, exact in floating
    # point, and as a dot product it ran 3-4 ms faster per 128 chains × 400 sweeps than a
    # comparison and a row reduction on XLA's CPU backend (benchmarks/README.md).
    change = (updated - flat) / (high - low)
    flips = jnp.dot(change, change)
    position = updated.reshape(shape)
    info = GibbsInfo(jnp.ones(()), flips / size, jnp.any(divergent))
    return GibbsState(position, logdensity_fn(position)), info


def _prepare(model, params, tuning: dict) -> dict:
    """Resolve the ``scan`` option to "sequential" or "blocked", with the colouring of the
    blocked scan in ``tuning["blocks"]`` (None for the sequential one)."""
    tuning = dict(tuning)
    scan = _checks.check_choice(tuning.get("scan", "auto"), "scan",
                                ["auto", "sequential", "blocked"])
    blocks = None
    if scan != "sequential":
        found = structure.gibbs_structure(model, params, scan)
        if found.blocks is None and scan == "blocked":
            raise ValueError(
                f"scan='blocked' needs the interaction graph of the energy, which could not be "
                f"certified: {found.reason} (only real-analytic operations of x are). Use "
                "scan='sequential', exact for any energy."
            )
        blocks = found.blocks
        # "auto": a graph that needs one colour per site gains nothing from blocking.
        if scan == "auto" and blocks is not None and len(blocks.colors) == model.support.size:
            blocks = None
    return with_blocks(tuning, blocks)


def with_blocks(tuning: dict, blocks: structure.GibbsBlocks | None) -> dict:
    """``tuning`` for the blocked scan over the colours ``blocks``, or for the sequential scan
    (None): what :func:`_prepare` resolves for ``un.sample``, and what a caller that found its
    colouring itself (a fit's chains, AIS) hands to the kernel's build.

    Example
    -------
    >>> import unnorm as un
    >>> from unnorm.samplers import gibbs, structure
    >>> blocks = structure.training_structure(un.models.ising_chain(4)).blocks
    >>> gibbs.with_blocks({"unroll": 1}, blocks)["scan"], gibbs.with_blocks({}, None)["scan"]
    ('blocked', 'sequential')
    """
    return {**tuning, "scan": "sequential" if blocks is None else "blocked", "blocks": blocks}


def _kernel(tuning: dict, num_warmup: int, values: tuple[float, float]) -> Kernel:
    blocks = tuning.get("blocks")
    if tuning["scan"] == "blocked" and blocks is None:
        raise ValueError("scan='blocked' needs the colouring found by the sampler's prepare "
                         "step; use scan='sequential' to build the kernel directly.")
    if tuning["scan"] != "blocked":
        blocks = None

    def kernel_step(key, state, logdensity_fn, warmup):
        if blocks is not None:
            return blocked_step(key, state, logdensity_fn, blocks.colors, values=values,
                                multilinear=blocks.multilinear, unroll=tuning["unroll"])
        return step(key, state, logdensity_fn, values=values, unroll=tuning["unroll"])

    def stats(state, info):
        return {
            "acceptance_rate": info.acceptance_rate,
            "flip_rate": info.flip_rate,
            "diverging": info.is_divergent,
        }

    return Kernel(
        "gibbs", True, False, lambda position, logdensity_fn, key: init(position, logdensity_fn),
        kernel_step, lambda state: state,
        position=lambda state: state.position,
        logdensity=lambda state: state.logdensity,
        stats=stats,
        refresh=lambda state, logdensity_fn, position=None: init(
            state.position if position is None else position, logdensity_fn),
    )


_DEFAULTS = {"unroll": 1, "scan": "auto"}

#: ``sampler="gibbs"``: binary and spin supports
GIBBS = SamplerSpec(
    name="gibbs", description="Gibbs, sequential or blocked scan (binary / spin supports)",
    discrete=True, uses_gradient=False, defaults=_DEFAULTS, checks=option_checks(_DEFAULTS),
    build=_kernel, has_step_size=False, prepare=_prepare)
