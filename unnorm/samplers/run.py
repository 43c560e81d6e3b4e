"""``unnorm.sample``: draw ``x ~ p(x; θ) ∝ exp(-E(x; θ))`` and return ArviZ InferenceData.

Continuous supports are sampled in an unconstrained space: with ``x = T(u)`` and ``T`` NumPyro's
``biject_to(support)``, the chain targets ``log p(u) = -E(T(u); θ) + log|det ∂T/∂u|``; draws are
mapped back to ``x``. Chains run vectorized (``vmap``) and steps run in jitted chunks, each
call paced to about half a second (:mod:`unnorm.pacing`), so that a progress bar can be shown
and an interrupt is raised between calls. Each step's key is ``fold_in(chain_key, step)``: the
draws do not depend on how the run is chunked. With several devices the chains are split over
them (:mod:`unnorm.samplers.devices`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import _checks, _xla, pacing, threefry
from .._compat import to_inference_data
from ..diagnostics import ConvergenceWarning, warn_convergence, warn_step_cap
from ..improper import warn_runaway
from ..model import Model, format_params
from . import chain_blocks, chain_groups, chains
from . import devices as chain_devices
from .registry import build_kernel, check_sampler, check_step_options, check_tuning
from .spec import Kernel
from .target import to_position, unconstrained_logdensity

__all__ = ["sample", "sample_draws", "reusable_chunk", "Draws"]

_WARMUP, _SAMPLING = "warmup", "sampling"
#: the dtype discrete draws leave the compiled chunks in (see _run_chunk_impl)
_DISCRETE_DRAW_DTYPE = np.int8


@functools.partial(jax.jit, static_argnames=("model", "spec", "units"))
def _prepare(model: Model, spec: Kernel, params, key, positions, unconstrained,
             units: chain_groups.GroupLayout):
    """Everything before the chains' states, in one compiled function: the keys, the starting
    points (``positions``, or when it is None the dispersed ``unconstrained`` ones) and their
    checks.

    Returns ``(positions, value_ok, grad_ok, parts)``; ``value_ok`` / ``grad_ok`` say per
    chain whether the energy and the log-density (and, for gradient-based samplers, its
    gradient) are finite at the start; ``parts`` holds per unit of chains (a block, or a
    group; :attr:`~unnorm.samplers.chain_groups.GroupLayout.units`) ``(chain_keys, points,
    warmup_keys, sampling_keys)``, the points those :func:`_start` takes."""
    num_chains = units.num_chains
    # chain c's keys come from fold_in(key, c) alone: its draws do not depend on num_chains
    keys = jax.vmap(lambda c: threefry.split(threefry.fold_in(key, c), 3))(
        jnp.arange(num_chains))
    chain_keys, warmup_keys, sampling_keys = (keys[:, i] for i in range(3))
    support = model.support
    points = unconstrained if positions is None else positions
    if positions is None:
        positions = unconstrained if support.is_discrete else support.transform(unconstrained)
    else:
        unconstrained = positions if support.is_discrete else support.transform.inv(positions)
    logdensity_fn = unconstrained_logdensity(model, params)
    energies = jax.vmap(lambda x: model.energy(params, x))(positions)
    logdensities = jax.vmap(logdensity_fn)(unconstrained)
    value_ok = jnp.isfinite(energies) & jnp.isfinite(logdensities)
    grad_ok = jnp.ones_like(value_ok)
    if spec.uses_gradient:
        grads = jax.vmap(jax.grad(logdensity_fn))(unconstrained)
        grad_ok = jnp.all(jnp.isfinite(grads), axis=tuple(range(1, grads.ndim)))
    parts = chain_groups.split((chain_keys, points, warmup_keys, sampling_keys), units)
    return positions, value_ok, grad_ok, parts


@functools.partial(jax.jit, static_argnames=("model", "spec", "given"))
def _start(model: Model, spec: Kernel, params, chain_keys, points, given: bool):
    """The states of one unit of chains, started at ``points``: the given positions
    (``given``) or unconstrained points. Compiled for the unit's width, as the steps are, so
    that a chain's cached log-density and gradient do not depend on the chains beside it
    (:mod:`unnorm.samplers.chain_blocks`)."""
    support = model.support
    u = support.transform.inv(points) if given and not support.is_discrete else points
    logdensity_fn = unconstrained_logdensity(model, params)
    return jax.vmap(lambda k, point: spec.init(point, logdensity_fn, k))(chain_keys, u)


def _run_chunk_impl(model: Model, spec: Kernel, params, chain_keys, states, start, count,
                    warmup, finalize, length: int, thinning: int):
    """Advance every chain ``count`` draws (each ``thinning`` steps) from global step ``start``.

    ``count`` (at most ``length``, the outputs' length), ``warmup`` and ``finalize`` (end the
    warmup before the first step) are traced, so calls of any count, in warmup and sampling,
    share one compilation (:mod:`unnorm.pacing`). Returns the states, the draws and statistics
    with dims (draw, chain, ...), of which the first ``count`` are filled, and whether every
    draw is finite."""
    logdensity_fn = unconstrained_logdensity(model, params)
    exact_lp = model.support.is_discrete or model.support.kind == "real"
    states = jax.lax.cond(finalize, jax.vmap(spec.finalize), lambda s: s, states)

    def record(state, info, diverged):
        stats = spec.stats(state, info)
        stats["diverging"] = diverged
        position = to_position(model, spec.position(state))
        stats["lp"] = spec.logdensity(state) if exact_lp else -model.energy(params, position)
        if model.support.is_discrete:
            # The support's two values are small integers: compact draws are a quarter of the
            # memory to fill and write (the host stores them in the position's dtype).
            position = position.astype(_DISCRETE_DRAW_DTYPE)
        return position, stats

    def one_draw_all_chains(states, index):
        # Step numbers are global: the stream does not depend on how the run is chunked.
        steps = (start + index) * thinning + jnp.arange(thinning)
        states, infos = chains.advance(spec, states, logdensity_fn, chain_keys, steps, warmup)
        # the statistics of the draw's last step; a divergence at any of its steps counts
        info = jax.tree_util.tree_map(lambda a: a[-1], infos)
        diverged = jnp.any(infos.is_divergent, axis=0)
        return states, jax.vmap(record)(states, info, diverged)

    # A loop over draws with the chains vmapped inside: the draws are stored as (draw, chain,
    # ...) with no transposition on the device; the caller swaps the axes of the NumPy array
    # (a view, not a copy). Its trip count is traced: one program serves every count.
    states, (positions, stats) = pacing.stored_loop(one_draw_all_chains, states, count, length)
    # Discrete kernels only ever write one of the support's two values: no pass over the draws
    # (the rows past count hold zeros, which are finite).
    finite = jnp.array(True) if model.support.is_discrete else jnp.all(jnp.isfinite(positions))
    return states, (positions, stats), finite


_RUN_CHUNK_STATIC = ("model", "spec", "length", "thinning")


@functools.cache
def _chunk_runner(options: tuple = ()):
    """``_run_chunk_impl`` jitted with unnorm's CPU sampling compile options
    (:mod:`unnorm._xla`) and the kernel's own ``options``, built once per set so that every call
    of ``un.sample`` shares its compilation cache."""
    return jax.jit(_run_chunk_impl, static_argnames=_RUN_CHUNK_STATIC,
                   compiler_options=_xla.sampling_compiler_options(options))


def _chunk_length(num_warmup: int, num_samples: int, show_progress: bool) -> int:
    """One scan length for both phases, so that one compilation serves the whole run.

    A common divisor of ``num_warmup`` and ``num_samples``; with a progress bar, the largest one
    that still splits the run into 20 or more updates. 0 when no common divisor of at least 10
    does: each phase is then chunked on its own."""
    common = math.gcd(num_warmup, num_samples)  # gcd(0, n) = n
    best = common
    if show_progress:
        total = num_warmup + num_samples
        divisors = [d for d in range(1, common + 1) if common % d == 0 and total // d >= 20]
        best = max(divisors, default=common)
    return best if best >= 10 else 0


def _phase_capacity(total: int, length: int, show_progress: bool) -> int:
    """The draws a compiled call of one phase of ``total`` draws can hold: ``length`` (0: see
    below), or without a common length a twentieth of the phase with a progress bar and the
    whole phase without. How many each call runs is paced by time (:mod:`unnorm.pacing`)."""
    if total == 0:
        return 0
    if length:
        return length
    return max(1, -(-total // 20)) if show_progress else total


def _initial_positions(model: Model, init, num_chains: int) -> jax.Array | None:
    """The validated ``init`` points, one per chain; None for the default dispersed ones."""
    support = model.support
    if init is None:
        return None
    arr = np.asarray(init)  # converted to float by check_data, which refuses complex points
    if arr.shape == support.event_shape:
        arr = np.broadcast_to(arr, (num_chains, *support.event_shape))
    if arr.shape != (num_chains, *support.event_shape):
        raise ValueError(
            f"init has shape {np.shape(init)}; give one point of shape {support.event_shape} "
            f"or one per chain, shape ({num_chains}, {', '.join(map(str, support.event_shape))})."
        )
    return jnp.asarray(support.check_data(arr, name="init", dtype=model.dtype))


def _check_initial_state(params, positions, value_ok, grad_ok) -> None:
    """PyMC-style 'Initial evaluation failed': name the chains, the points and the params."""
    ok, what = np.asarray(value_ok), "energy"
    if ok.all() and not np.asarray(grad_ok).all():
        ok, what = np.asarray(grad_ok), "gradient of the energy"
    if not ok.all():
        bad = np.flatnonzero(~ok)
        point = np.array2string(np.asarray(positions[bad[0]]).ravel()[:8], precision=4)
        raise ValueError(
            f"Initial evaluation failed: the {what} is not finite at the starting point of "
            f"chain(s) {bad.tolist()} (chain {bad[0]} starts at x = {point}).\n"
            f"Parameter values:\n{format_params(params)}\n"
            "Check the energy for log/division of non-positive values, or pass init= points "
            "where it is finite."
        )


def sample(
    model: Model,
    params: dict | None = None,
    *,
    key,
    sampler: str = "nuts",
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    thinning: int = 1,
    init: Any = None,
    progress_bar: bool = True,
    warn: bool = True,
    chain_method: str = "parallel",
    step_size: float | None = None,
    target_accept: float | None = None,
    dims: Sequence[str] | None = None,
    coords: Mapping[str, Sequence] | None = None,
    devices: Any = None,
    **sampler_options: Any,
):
    """Draw samples ``x ~ p(x; θ) ∝ exp(-E(x; θ))`` and return ArviZ InferenceData.

    Parameters
    ----------
    model : Model
        The model to sample from.
    params : dict, optional
        Parameter values (constrained space); default ``model.params``.
    key : jax PRNG key
        ``jax.random.key(seed)``; the same key gives identical draws.
    sampler : str
        ``"nuts"``, ``"hmc"`` (NumPyro), ``"mala"``, ``"langevin"`` (unadjusted, Song & Kingma 2021,
        eq. 6), ``"rwmh"`` for continuous supports; ``"annealed_langevin"`` (Song & Ermon 2019) for
        noise-conditional energies on real supports; ``"gibbs"`` for binary and spin supports.
    num_chains, num_warmup, num_samples, thinning : int
        Chains (run vectorized), warmup steps per chain (adaptation; discarded, never thinned),
        draws kept per chain, and steps per kept draw.
    init : array, optional
        Starting point(s): shape ``event_shape`` or ``(num_chains, *event_shape)``. Default:
        dispersed points, Uniform(-2, 2) in the unconstrained space.
    progress_bar : bool
        Show a tqdm bar (always off when the ``CI`` environment variable is set).
    warn : bool
        Warn after sampling about R-hat > 1.01, ESS per chain < 100 and divergences.
    dims : sequence of str, optional
        Names of the event dimensions of ``x`` (one per axis of the model's event shape), as
        ArviZ's ``dims``: ``dims=["site"]`` gives ``posterior["x"]`` the dims ``("chain",
        "draw", "site")``. Default ``x_dim_0``, ``x_dim_1``...
    coords : dict, optional
        Labels of those dimensions, ``{"site": ["a", "b", "c"]}`` (default 0, 1, 2...).
    chain_method : {"parallel", "vectorized"}
        ``"parallel"`` (default): on the CPU, the chains are split into one group per
        available core, each group vectorized, the groups run at the same time in threads.
        ``"vectorized"``: all chains in one group. The same on accelerators. On the CPU each
        chain's draws are the same either way, and whatever ``num_chains``, bit for bit for
        NUTS, HMC, random-walk Metropolis and Gibbs (NUTS and HMC compute their chains in
        blocks of a fixed width, each block one compiled program:
        :mod:`unnorm.samplers.chain_blocks`); for MALA, ULA and annealed Langevin only as far
        as XLA rounds the batches of either size alike, or bit for bit when they are given
        ``chain_block`` (below).
    devices : None, int or list of jax.Device
        The devices the chains are split over (along the chain axis, with ``jax.sharding``;
        the parameters are replicated). None (default): all of ``jax.devices()``; an int
        ``n``: the first ``n`` of them; or a list of devices. With one device the run is the
        single-device one (on the CPU, with ``chain_method``'s thread groups); with several,
        the chains are split over them and ``chain_method`` is not used. ``num_chains`` need
        not be a multiple of the device count: the last device's chains are padded with copies
        of the last chain, whose draws are dropped. A chain's draws do not depend on the
        devices: on the CPU bit for bit for NUTS and HMC (and the Langevin kernels given
        ``chain_block``), which run each block of chains through the single-device program
        on the device that holds it
        (:mod:`unnorm.samplers.devices`); for the other samplers, and on accelerators, as far
        as XLA rounds the sharded and the single-device programs alike (on two CPU devices it
        did for random-walk Metropolis, MALA and Gibbs in the tests). When the devices belong
        to several processes (``jax.distributed``), every process makes the same call, computes
        the chains of its own devices, and returns the same InferenceData, every chain's draws
        gathered to it; ``devices`` must then include a device of the calling process.
    step_size : float, optional
        Initial step size (adapted during warmup for nuts, hmc, mala, rwmh and langevin unless
        ``adapt_step_size=False``). For mala/langevin it is ε of eq. 6.
    target_accept : float, optional
        Target acceptance of the step-size adaptation: default 0.8 (nuts, hmc), 0.574 (mala),
        0.234 (rwmh), 0.99 (langevin: the acceptance MALA would have, which keeps ULA's
        discretization bias small).
    **sampler_options
        ``max_tree_depth``, ``dense_mass``, ``adapt_mass_matrix`` (nuts/hmc), ``num_steps``,
        ``trajectory_length`` (default π), ``jitter`` (default 0.5: the path length of each
        draw varies by ±50%) (hmc), ``adapt_step_size`` (all but gibbs), ``unroll`` (gibbs).
        ``chain_block`` (mala, langevin, annealed_langevin, and tempering over them): None
        (default) runs each group of chains as one vectorized computation; a positive int
        ``W`` runs the chains on the CPU in blocks of ``W``, each block one call of one
        compiled ``W``-chain program, as NUTS and HMC always do, so that chain ``c``'s draws
        are the same bit for bit whatever ``num_chains``, ``chain_method``, the cores and the
        CPU devices. It costs time: few chains compute the padding of a block wider than
        their number, and many chains make one call per block. Ignored on accelerators.

    Returns
    -------
    InferenceData
        ``az.InferenceData`` (ArviZ 0.2x) or ``xarray.DataTree`` (ArviZ 1.x) with
        ``posterior["x"]`` of dims ``("chain", "draw", "x_dim_0", ...)`` (integers, int32, on
        binary and spin supports, so that ArviZ treats the draws as discrete) and
        ``sample_stats``
        ``lp`` (= -energy), ``acceptance_rate``, ``diverging``, ``step_size`` (not gibbs), and for
        NUTS/HMC ``n_steps``, ``energy`` (and ``tree_depth`` for NUTS); gibbs adds ``flip_rate``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import unnorm as un
    >>> model = un.Model(lambda p, x: 0.5 * jnp.sum((x - p["mu"]) ** 2),
    ...                  params={"mu": jnp.zeros(2)}, support=un.supports.real(2))
    >>> idata = un.sample(model, model.params, key=jax.random.key(0), sampler="mala",
    ...                   num_chains=2, num_warmup=100, num_samples=200, progress_bar=False,
    ...                   warn=False)
    >>> idata.posterior["x"].shape
    (2, 200, 2)
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be an unnorm.Model; got {type(model).__name__}.")
    params = model.params if params is None else model.check_params(params)
    key = _checks.check_key(key)
    sampler_spec = check_sampler(sampler, model)
    num_chains = _checks.check_int(num_chains, "num_chains", 1, _checks.INT32_MAX)
    _checks.check_choice(chain_method, "chain_method", chain_groups.CHAIN_METHODS)
    num_samples = _checks.check_int(num_samples, "num_samples", 1)
    num_warmup = _checks.check_int(num_warmup, "num_warmup", 0)
    thinning = _checks.check_int(thinning, "thinning", 1)
    if num_warmup + num_samples * thinning > _checks.INT32_MAX:
        # each step's key is fold_in(chain_key, step), the step an int32 inside the loop
        raise ValueError(
            f"num_warmup + num_samples * thinning must be at most {_checks.INT32_MAX} steps per "
            f"chain; got num_warmup={num_warmup}, num_samples={num_samples}, "
            f"thinning={thinning}.")
    progress_bar = _checks.check_bool(progress_bar, "progress_bar")
    warn = _checks.check_bool(warn, "warn")
    tuning = check_tuning(sampler_spec, {
        **sampler_options,
        **check_step_options(sampler_spec, step_size=step_size, target_accept=target_accept)})
    dims, coords = _check_dims(model, dims, coords)
    chosen = chain_devices.require_local(chain_devices.check_devices(devices))
    placement = (chain_devices.ChainPlacement(chosen, num_chains) if len(chosen) > 1
                 else None)
    # an explicit single device is honoured; devices=None leaves JAX's default device alone
    where = (jax.default_device(chosen[0]) if devices is not None and placement is None
             else contextlib.nullcontext())
    with where:
        draws = _run(model, params, key, sampler_spec, tuning, num_chains, num_warmup,
                     num_samples, thinning, init, progress_bar, warn, chain_method, None,
                     placement)
    return draws.inference_data(dims, coords)


def _check_dims(model: Model, dims, coords) -> tuple[list[str] | None, dict | None]:
    """``dims`` as a list of one name per event axis, ``coords`` as a dict of label arrays of
    the event sizes; clear errors otherwise."""
    shape = model.support.event_shape
    if dims is not None:
        if (isinstance(dims, str) or not isinstance(dims, (Sequence, np.ndarray))
                or not all(isinstance(d, str) for d in dims)):
            raise TypeError(f"dims must be a list of dimension names, one per axis of the "
                            f"model's event shape {shape}; got {dims!r}.")
        dims = list(dims)
        if len(dims) != len(shape) or len(set(dims)) != len(dims):
            raise ValueError(f"dims must name each of the {len(shape)} axes of the model's "
                             f"event shape {shape} once; got {dims!r}.")
        if {"chain", "draw"} & set(dims):
            raise ValueError(f"dims may not use 'chain' or 'draw' (ArviZ's own); got {dims!r}.")
    if coords is None:
        return dims, None
    if not isinstance(coords, Mapping):
        raise TypeError(f"coords must be a dict of dimension name -> labels; got {coords!r}.")
    names = dims if dims is not None else [f"x_dim_{i}" for i in range(len(shape))]
    checked = {}
    for name, labels in coords.items():
        if name not in names:
            raise ValueError(f"coords names the dimension {name!r}, which x does not have; "
                             f"its event dims are {names}.")
        labels = np.asarray(labels)
        size = shape[names.index(name)]
        if labels.shape != (size,):
            raise ValueError(f"coords[{name!r}] must hold {size} labels (the size of that "
                             f"axis); got shape {labels.shape}.")
        checked[name] = labels
    return dims, checked


class Draws(NamedTuple):
    """The draws of a sampling run as NumPy arrays, before ArviZ: ``x`` of dims (chain, draw,
    *event_shape), the per-draw ``stats`` likewise, and the attributes of the InferenceData
    that :meth:`inference_data` builds (``un.sample``'s return value)."""

    x: np.ndarray
    stats: dict
    attrs: dict
    discrete: bool = False

    def inference_data(self, dims: Sequence[str] | None = None,
                       coords: Mapping[str, Sequence] | None = None):
        """The draws as ``un.sample`` returns them (see :func:`sample`): on a discrete support
        as int32, which ArviZ plots and summarizes as discrete values (int8 would overflow in
        users' products of draws)."""
        x = self.x.astype(np.int32) if self.discrete else self.x
        return to_inference_data({"x": x}, self.stats, attrs=self.attrs,
                                 dims=None if dims is None else {"x": dims}, coords=coords)


def reusable_chunk(num_warmup: int, thinning: int) -> int:
    """A chunk length (in draws) for :func:`sample_draws` whose one compilation serves every
    number of draws after a warmup of ``num_warmup`` steps: a divisor of the warmup's draws (of
    ``thinning`` steps when it divides ``num_warmup``), at most 250, or 250 when no divisor of
    at least 10 exists. (A compiled call runs any number of draws up to its length, so any
    length would serve; this one keeps the programs of earlier versions.)"""
    warmup_draws = num_warmup // thinning if num_warmup % thinning == 0 else num_warmup
    length = math.gcd(warmup_draws, 250)
    return length if length >= 10 else 250


def sample_draws(model: Model, params, *, key, sampler: str, num_chains: int, num_warmup: int,
                 num_samples: int, thinning: int = 1, init: Any = None,
                 progress_bar: bool = True, warn: bool = True, chunk: int | None = None,
                 devices: tuple | None = None) -> Draws:
    """:func:`sample` with the sampler's default options for the chain-based estimators: the
    draws as arrays (:class:`Draws`), no InferenceData.

    ``params`` must be valid values of the model's parameters (they are not checked again: a
    fit's estimate is, by construction). With ``chunk`` (see :func:`reusable_chunk`) both
    phases run in compiled calls of at most that many draws, the warmup's of ``thinning``
    steps where ``thinning`` divides ``num_warmup`` (the same steps, keys and adaptation as
    single steps): one compilation then serves samplings of any length, such as MLE's rounds.
    Each chain's draws are those of :func:`sample` with the same arguments.

    ``devices`` (checked devices, as a fit chose them): the chains are split over them as
    :func:`sample` splits them where each chain's draws stay one device's bit for bit, that
    is for kernels whose chains run in fixed-width blocks (NUTS and HMC on the CPU:
    :mod:`unnorm.samplers.chain_blocks`), and run on one device otherwise. A vectorized
    kernel partitioned over devices is another executable than the one device's, rounded
    differently in the last bits, and over a long run a Metropolis decision can then go the
    other way: a fit's standard errors would then depend on the device count.
    """
    sampler_spec = check_sampler(sampler, model)
    tuning = check_tuning(sampler_spec, check_step_options(sampler_spec))
    placement = (chain_devices.ChainPlacement(tuple(devices), num_chains)
                 if devices is not None and len(devices) > 1 else None)
    return _run(model, params, _checks.check_key(key), sampler_spec, tuning, num_chains,
                num_warmup, num_samples, thinning, init, progress_bar, warn, "parallel", chunk,
                placement, blocks_only=True)


def _run(model: Model, params, key, sampler_spec, tuning: dict, num_chains: int,
         num_warmup: int, num_samples: int, thinning: int, init, progress_bar: bool, warn: bool,
         chain_method: str, chunk: int | None,
         placement: chain_devices.ChainPlacement | None = None,
         blocks_only: bool = False) -> Draws:
    """The sampling run of :func:`sample` and :func:`sample_draws`, arguments checked; with
    a ``placement``, the chains split over its devices (with ``blocks_only``, only those of a
    kernel that runs in blocks: the others on one device)."""
    sampler = sampler_spec.name
    if sampler_spec.prepare is not None:
        tuning = sampler_spec.prepare(model, params, tuning)
    values = model.support.values if model.support.is_discrete else None
    spec = build_kernel(sampler_spec, num_warmup, values, tuning)

    positions = _initial_positions(model, init, num_chains)
    given = positions is not None
    dispersed = None
    if not given:
        dispersed = jnp.asarray(model.support.initial_unconstrained(key, num_chains),
                                dtype=jnp.result_type(float))
    block = chain_blocks.block_width(spec)
    if blocks_only and block is None:
        placement = None
    if placement is None:
        layout = chain_groups.choose_layout(num_chains, chain_method, block=block)
    elif block is None:
        # Sharded chains run as one group (the devices, not threads, run them at once), and as
        # one unit: XLA partitions the one vectorized computation over the devices.
        layout = chain_groups.GroupLayout(num_chains, 1)
    else:
        # One group per device, of whole blocks: each block is the single-device program,
        # so its chains' draws are the single-device ones bit for bit.
        layout = placement.block_layout(block)
    positions, value_ok, grad_ok, parts = _prepare(
        model, spec, params, key, positions, dispersed, layout.units)
    _check_initial_state(params, positions, value_ok, grad_ok)
    # The starts run on the default device, as on one device; only the chunks of steps are
    # spread over the devices.
    units = tuple((_start(model, spec, params, chain_keys, points, given), warmup, sampling)
                  for chain_keys, points, warmup, sampling in parts)
    unit_params = (params,) * len(units)
    if placement is not None and block is None:
        units, unit_params = (placement.chains(units[0]),), (placement.replicated(params),)
    elif placement is not None:
        units, unit_params = placement.place_blocks(units, params, layout)
    states, warmup_keys, sampling_keys = (tuple(part) for part in zip(*units, strict=True))

    disabled = _checks.progress_disabled(progress_bar)
    # Warmup is num_warmup single steps whatever the thinning: NumPyro's kernels count their
    # adaptation window in steps. With a fixed chunk, it runs as draws of `thinning` steps
    # where they add up to num_warmup: the same steps, and the sampling's compilation.
    warmup_thinning = thinning if chunk and num_warmup % thinning == 0 else 1
    if chunk:
        warmup_capacity = sampling_capacity = chunk
    else:
        length = _chunk_length(num_warmup, num_samples, not disabled)
        warmup_capacity = _phase_capacity(num_warmup, length, not disabled)
        sampling_capacity = _phase_capacity(num_samples, length, not disabled)
    started = time.perf_counter()
    with tqdm(total=num_warmup + num_samples, disable=disabled,
              desc=f"{sampler} ({num_chains} chains{_on_devices(placement, layout)})",
              unit="draw") as bar:
        run = _PhaseRunner(model, spec, unit_params, layout, chain_groups.executor(layout),
                           bar, disabled, positions.dtype, placement)
        states, _, _, pace = run(states, warmup_keys, num_warmup // warmup_thinning,
                                 warmup_capacity, warmup_thinning, _WARMUP)
        # the sampling's draws cost what the warmup's did when they are as long
        states, (draws, stats), finite, _ = run(
            states, sampling_keys, num_samples, sampling_capacity, thinning, _SAMPLING,
            pace if warmup_thinning == thinning else None)
    elapsed = time.perf_counter() - started
    if placement is not None and placement.spans_processes:
        # process 0's wall time, so that every process returns the same InferenceData
        elapsed = float(chain_devices.from_first_process(np.float32(elapsed)))

    if not finite:  # kernels reject non-finite moves; this guards the guard
        raise RuntimeError(
            f"sampler {sampler!r} produced non-finite draws; this is a bug in unnorm, please "
            "report it with the model."
        )
    if warn:
        # stacklevel 4: the warnings point at the caller of sample / sample_draws
        if not model.support.is_discrete:
            # one check of the draws for every continuous sampler: chains of an improper
            # density run away, whichever kernel moves them
            warn_runaway(model.support, draws, stats["lp"], sampler, ConvergenceWarning,
                         stacklevel=4)
        warn_convergence(draws, stats["diverging"], sampler, sampler_spec.divergence_advice,
                         stacklevel=4)
        cap = sampler_spec.step_cap(tuning) if sampler_spec.step_cap is not None else None
        if cap is not None:
            warn_step_cap(stats["n_steps"], stats["step_size"], cap.min_steps, cap.what,
                          sampler, stacklevel=4)
    return Draws(draws, stats, {
        "sampler": sampler, "num_warmup": num_warmup, "thinning": thinning,
        "model": model.name, "sampling_time": elapsed, "inference_library": "unnorm"},
        model.support.is_discrete)


def _on_devices(placement: chain_devices.ChainPlacement | None,
                layout: chain_groups.GroupLayout) -> str:
    """The progress bar's note of the devices a sharded run uses ("" on one device): a
    blocked kernel's run uses one per group, fewer when there are fewer blocks than
    devices."""
    if placement is None:
        return ""
    used = len(placement.devices) if layout.block is None else layout.num_groups
    return f" on {used} device{'s' if used > 1 else ''}"


class _PhaseRunner(NamedTuple):
    """Runs one phase (warmup or sampling) of every chain group, in chunks: each group's
    units (its blocks of chains, or the group itself) one compiled call after the other, unit
    ``u`` with the parameters ``params[u]`` (a copy on the unit's device)."""

    model: Model
    spec: Kernel
    params: tuple
    layout: chain_groups.GroupLayout
    pool: Any
    bar: Any
    disabled: bool
    position_dtype: Any
    placement: chain_devices.ChainPlacement | None = None

    @property
    def spans_processes(self) -> bool:
        return self.placement is not None and self.placement.spans_processes

    def __call__(self, states: tuple, chain_keys: tuple, total: int, capacity: int,
                 thinning: int, phase: str, pace: pacing.Pace | None = None):
        """Run ``total`` draws (of ``thinning`` steps each) in calls of at most ``capacity``
        draws, each paced to about :data:`unnorm.pacing.TARGET_SECONDS` from ``pace`` (that
        of a call before, if any). Returns the final states (one per unit), for sampling the
        draws and the statistics as NumPy arrays of dims (chain, draw, ...), whether every
        draw is finite, and the pace of the last call.

        A ``KeyboardInterrupt`` comes out once no group computes any more (within about one
        call), saying how far the phase got."""
        sink = None
        if phase == _SAMPLING:
            host = ({_DISCRETE_DRAW_DTYPE: self.position_dtype}
                    if self.model.support.is_discrete else None)
            sink = chain_groups.DrawSink(self.layout.units, total, host_dtypes=host,
                                         keep_buffers=not self.spans_processes)
        finite, done = True, 0
        warmup = jnp.asarray(phase == _WARMUP)
        # Built here, not in the workers: two first calls at once could build two jitted
        # functions, and compile twice.
        run_chunk = _chunk_runner(self.spec.compiler_options)
        if sink is not None and self.spans_processes:
            # a process may hold none of the blocks: it still needs the outputs' arrays,
            # to receive the other processes' chains
            sink.allocate(jax.eval_shape(
                lambda params, keys, state: _run_chunk_impl(
                    self.model, self.spec, params, keys, state, 0, capacity, warmup, False,
                    capacity, thinning)[1],
                self.params[0], chain_keys[0], states[0]))
        try:
            while done < total:
                count = pacing.next_count(pace, total - done, capacity)
                if self.spans_processes:
                    # every process runs as many draws a call as process 0: a partitioned
                    # program is one call on all of them
                    count = int(chain_devices.from_first_process(np.int32(count)))
                results, pace = pacing.timed(functools.partial(
                    self._call, run_chunk, sink, states, chain_keys, done, count, capacity,
                    thinning, warmup, phase, total), count)
                states = tuple(state for state, _, _ in results)
                done += count
                finite = finite and all(bool(ok) for _, _, ok in results)
                self._show(results, count, count * (thinning if phase == _WARMUP else 1),
                           phase)
        except KeyboardInterrupt as err:
            if thinning > 1:
                unit = f"draws of {thinning} steps"
            else:
                unit = "steps" if phase == _WARMUP else "draws"
            raise pacing.interrupted(
                err, f"while sampling with {self.spec.name!r}: during {phase}, after {done} of "
                f"{total} {unit}") from None
        if phase != _SAMPLING:
            return states, None, True, pace
        outputs = sink.result()
        if self.spans_processes:
            outputs = self.placement.gather(outputs, self.layout)
            # each process checked only its own chains' draws
            finite = self.model.support.is_discrete or bool(np.isfinite(outputs[0]).all())
        return states, outputs, finite, pace

    def _call(self, run_chunk, sink, states, chain_keys, done: int, count: int, capacity: int,
              thinning: int, warmup, phase: str, total: int) -> list:
        """One compiled call of every unit (each group's one after the other): ``count`` draws
        from draw ``done``."""
        # The first sampling call ends the warmup (fixes the adapted step size) first.
        finalize = phase == _SAMPLING and done == 0

        def run_unit(u):
            state, out, ok = jax.block_until_ready(run_chunk(
                self.model, self.spec, self.params[u], chain_keys[u], states[u], done, count,
                warmup, finalize, capacity, thinning))
            if sink is not None:
                sink.write(out, done, u, count)
            return state, out[1], ok

        def run_group(g):
            if (self.layout.block is not None and self.placement is not None
                    and not self.placement.is_local(g)):
                # another process's device holds these blocks: their states stay, unrun
                return [(states[u], None, True) for u in self.layout.units_of(g)]
            return [run_unit(u) for u in self.layout.units_of(g)]

        reserve = None
        if sink is not None and done == 0 and not sink.keeps_device_buffer(count, capacity):
            # The draws' array is allocated, and its pages mapped, by this thread while the
            # groups compute (see DrawSink.reserve_first).
            reserve = functools.partial(sink.reserve_first, self.model.support.event_shape,
                                        self.position_dtype)
        try:
            groups = chain_groups.map_groups(run_group, self.layout, self.pool, reserve)
            return [unit for group in groups for unit in group]
        except Exception as err:
            raise RuntimeError(
                f"sampler {self.spec.name!r} failed during {phase} at draws "
                f"{done}..{done + count} of {total}: {type(err).__name__}: {err}"
            ) from err

    def _show(self, results: list, count: int, advanced: int, phase: str) -> None:
        """Move the progress bar (it counts warmup steps and kept draws) and show the
        acceptance and divergences of the last call's ``count`` draws."""
        self.bar.update(advanced)
        if self.disabled:
            return
        # sliced on the host: a slice of a device array compiles a program per length
        # over several processes, this process's chains
        real = [(stats, self.layout.units.real_chains(u))
                for u, (_, stats, _) in enumerate(results) if stats is not None]
        if not real:  # another process computes every chain
            return
        accept = np.mean(np.concatenate(
            [chain_devices.local_chains(stats["acceptance_rate"], n)[:count].ravel()
             for stats, n in real]))
        diverging = sum(int(np.sum(chain_devices.local_chains(stats["diverging"], n)[:count]))
                        for stats, n in real)
        self.bar.set_postfix(phase=phase, accept=f"{accept:.2f}", divergent=diverging)
