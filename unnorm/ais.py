"""Annealed importance sampling for ``log Z`` (Neal 2001): the ``method="ais"`` of
:func:`unnorm.log_partition`, whose docstring gives the estimator and its options.

Chains move from a normalized base distribution to ``exp(-E)`` along the geometric path
``log γ_β = (1 - β) log p0 + β log f`` of intermediate densities, on the sigmoid schedule of
Grosse, Ghahramani & Adams (2015), with MALA steps (continuous supports, in the unconstrained
space) or Gibbs sweeps (binary and spin supports); their importance weights average to
``Z / Z0``.

On several devices the chains are split along their axis as :func:`unnorm.sample` splits its
own (:mod:`unnorm.samplers.devices`: a 1-D mesh, ``NamedSharding(mesh, P("chains"))`` on the
per-chain keys, padded with copies of the last chain to a multiple of the device count); the
compiled annealing is unchanged and XLA's SPMD partitioner splits it, so each device anneals
its own chains. Chain ``i``'s keys are the same whatever the device count, and the pilot
chains' mean acceptance, which steers the shared MALA step size, leaves the padding out: the
weights are the single-device run's, up to XLA's rounding.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from . import _checks, pacing, threefry
from ._compat import pareto_khat
from .model import Model, format_params
from .samplers import chains as chain_runner
from .samplers import devices as chain_devices
from .samplers import gibbs, langevin, structure
from .samplers.registry import SAMPLERS, build_kernel, check_tuning
from .samplers.target import unconstrained_logdensity

__all__ = ["AISRun", "AISSummary", "SCHEDULES", "annealed_log_partition", "default_chunk_length",
           "schedule_betas", "summarize"]

# Sigmoid schedule's steepness (Grosse, Ghahramani & Adams 2015 use δ = 4).
_SIGMOID_DELTA = 4.0
# A compiled call holds at most 1/_NUM_SCANS of the annealing, so that a progress bar moves at
# least that often; each runs as many temperatures as take about half a second (unnorm.pacing).
_NUM_SCANS = 20
# Keeps the adapted MALA step size away from 0 (0/0 in the proposal density) and overflow.
_LOG_STEP_BOUNDS = (math.log(1e-7), math.log(1e7))


#: The β schedules of ``schedule=``: the sigmoid of Grosse, Ghahramani & Adams (2015), dense at
#: both ends, or equal steps.
SCHEDULES = ("sigmoid", "linear")


def _sigmoid_schedule(num_temperatures: int) -> np.ndarray:
    """β_0 = 0 < ... < β_K = 1, float64 (Grosse, Ghahramani & Adams 2015)."""
    t = np.linspace(-_SIGMOID_DELTA, _SIGMOID_DELTA, num_temperatures)
    s = 1.0 / (1.0 + np.exp(-t))
    beta = (s - s[0]) / (s[-1] - s[0])
    beta[0], beta[-1] = 0.0, 1.0
    return beta


def default_chunk_length(num_temperatures: int) -> int:
    """Temperatures per compiled call: 1/_NUM_SCANS of the annealing, rounded up."""
    return -(-(num_temperatures - 1) // _NUM_SCANS)


def schedule_betas(schedule: str | None, num_temperatures: int, support) -> np.ndarray:
    """The β_0 = 0 < ... < β_K = 1 of ``schedule`` (checked here); None picks by support:
    equal steps from the uniform base of a binary or spin support, the sigmoid from the
    Gaussian base of a continuous one.

    Why equal steps on discrete supports: an ordering transition (the Ising model's, at
    β K ≈ 0.44) lies in the middle of the path, where the sigmoid is sparsest, and the chains
    that order late lag behind γ_β; with 1000 temperatures on the 16 × 16 torus at K = 0.6 the
    sigmoid's estimates fell about 0.9 nat below the exact log Z (3 standard errors) with
    well-balanced weights, and equal steps shrank that bias at the same cost. The uniform base,
    unlike a Gaussian one, is never much wider or narrower than the target, which is what the
    sigmoid's dense ends are for."""
    if schedule is None:
        schedule = "linear" if support.is_discrete else "sigmoid"
    _checks.check_choice(schedule, "schedule", SCHEDULES)
    if schedule == "linear":
        return np.linspace(0.0, 1.0, num_temperatures)
    return _sigmoid_schedule(num_temperatures)


def _base_array(value, name: str, support, default: float, positive: bool) -> np.ndarray:
    """``base_loc`` / ``base_scale``: a scalar or an array of the event shape, broadcast."""
    shape = support.event_shape
    if value is None:
        return np.full(shape, default)
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a number or an array of numbers of the event shape {shape}; got "
            f"{type(value).__name__} {value!r}."
        ) from None
    if arr.shape not in ((), shape):
        raise ValueError(
            f"{name} has shape {arr.shape}; give a scalar or an array of the event shape "
            f"{shape} of the support {support!r}."
        )
    bad = ~np.isfinite(arr) | ((arr <= 0) if positive else False)
    if np.any(bad):
        need = "finite and > 0 everywhere (standard deviations)" if positive else "finite"
        raise ValueError(
            f"{name} must be {need}; got {int(np.sum(bad))} bad value(s), e.g. "
            f"{float(arr[bad].flat[0]) if arr.ndim else float(arr)}."
        )
    return np.broadcast_to(arr, shape).copy()


class AISRun(NamedTuple):
    """One annealing run: every chain's final log-weight and the base's ``log Z0``, and on
    continuous supports the chains' final unconstrained positions (None on discrete ones)."""

    log_weights: np.ndarray
    log_z0: float
    final_positions: np.ndarray | None = None


def annealed_log_partition(model: Model, params, key, *, num_chains, num_temperatures,
                           num_mcmc_steps, step_size, adapt_step_size, target_accept, base_loc,
                           base_scale, progress_bar, schedule=None,
                           chunk_length=None, devices=None) -> AISRun:
    """One AIS run towards log Z (see :func:`unnorm.log_partition`, ``method=\"ais\"``); the
    weights are summarized by :func:`summarize`. Arguments are checked here; ``params``
    already are. ``chunk_length``: the temperatures one compiled call holds (default
    ``ceil((num_temperatures - 1) / 20)``); runs that share it, the model and the number of
    chains share one compiled program whatever their ``num_temperatures``. ``devices``:
    checked devices (:func:`unnorm.samplers.devices.check_devices`) to split the chains over;
    None or one: a single device."""
    support = model.support
    num_chains = _checks.check_int(num_chains, "num_chains", 1, _checks.INT32_MAX)
    num_temperatures = _checks.check_int(num_temperatures, "num_temperatures", 2,
                                         _checks.INT32_MAX)
    num_mcmc_steps = _checks.check_int(num_mcmc_steps, "num_mcmc_steps", 1, _checks.INT32_MAX)
    adapt = _checks.check_bool(adapt_step_size, "adapt_step_size")
    disabled = _checks.progress_disabled(_checks.check_bool(progress_bar, "progress_bar"))
    dtype = jnp.result_type(float)
    if support.is_discrete:
        for name, value in (("step_size", step_size), ("base_loc", base_loc),
                            ("base_scale", base_scale)):
            if value is not None:
                raise ValueError(
                    f"{name} does not apply to the {support!r} support: method='ais' anneals a "
                    "binary or spin model from the uniform distribution with Gibbs sweeps (no "
                    f"Gaussian base, no step size); got {name}={value!r}."
                )
        num_pilot = 0
    else:
        target_accept = _checks.check_probability(target_accept, "target_accept")
        loc = _base_array(base_loc, "base_loc", support, 0.0, positive=False)
        scale = _base_array(base_scale, "base_scale", support, 1.0, positive=True)
        if step_size is None:
            step_size = float(np.min(scale)) * support.size ** (-1 / 6)
        step_size = _checks.check_positive_float(step_size, "step_size")
        num_pilot = min(32, max(8, num_chains // 8)) if adapt else 0

    # Per-chain key streams: chain i draws the same numbers whatever num_chains is, and the
    # pilot chains' stream is disjoint from the counted chains'.
    chain_keys = jax.random.split(jax.random.fold_in(key, 0), num_chains)
    if num_pilot:
        pilot_keys = jax.random.split(jax.random.fold_in(key, 1), num_pilot)
        chain_keys = jnp.concatenate([chain_keys, pilot_keys])
    placement = (chain_devices.ChainPlacement(tuple(devices), num_chains + num_pilot)
                 if devices is not None and len(devices) > 1 else None)
    if placement is not None:
        # every per-chain array of the annealing follows its keys' placement
        chain_keys = placement.chains(chain_keys)

    betas = schedule_betas(schedule, num_temperatures, support)
    num_steps = num_temperatures - 1
    length = default_chunk_length(num_temperatures) if chunk_length is None else chunk_length
    padded = num_steps + length
    # Padding at β = 1 with a zero increment, never run (each call runs only the temperatures
    # left): it gives every call's slice of the schedule one length (one compilation).
    beta = np.ones(padded)
    beta[:num_steps] = betas[1:]
    delta = np.zeros(padded)
    delta[:num_steps] = np.diff(betas)
    xs = (np.arange(1, padded + 1, dtype=np.int32), beta.astype(dtype), delta.astype(dtype),
          np.arange(padded) < num_steps)

    if support.is_discrete:
        carry = _init_discrete(model, params, chain_keys)
        start_values = carry[1]
        # θ is fixed along the path and -βE has the graph of -E for every β > 0: the
        # colouring found at θ serves every temperature
        run = functools.partial(_anneal_discrete, model, params, chain_keys=chain_keys,
                                num_mcmc_steps=num_mcmc_steps,
                                blocks=structure.gibbs_structure(model, params, "auto").blocks)
        stat_name = "flip_rate"
        log_z0 = support.size * math.log(2.0)
    else:
        loc, scale = jnp.asarray(loc, dtype), jnp.asarray(scale, dtype)
        state = _init_continuous(model, params, chain_keys, loc, scale)
        start_values = state[1]
        carry = (state, jnp.asarray(math.log(step_size), dtype))
        run = functools.partial(_anneal_continuous, model, params, chain_keys=chain_keys,
                                loc=loc, scale=scale,
                                target_accept=jnp.asarray(target_accept, dtype),
                                num_mcmc_steps=num_mcmc_steps, num_counted=num_chains,
                                num_pilot=num_pilot, adapt=adapt)
        stat_name = "accept"
        log_z0 = 0.0
    _check_start(model, params, chain_devices.host_array(start_values)[:num_chains])

    with tqdm(total=num_steps, disable=disabled, desc=f"ais ({num_chains} chains)",
              unit="temperature") as bar:
        done, pace = 0, None
        try:
            while done < num_steps:
                count = pacing.next_count(pace, num_steps - done, length)
                if placement is not None and placement.spans_processes:
                    # every process calls the partitioned program in step: process 0's count
                    count = int(chain_devices.from_first_process(np.int32(count)))
                chunk = tuple(jnp.asarray(a[done:done + length]) for a in xs)

                def call(carry=carry, chunk=chunk, count=count):
                    return jax.block_until_ready(run(carry, chunk, count))

                (carry, stat), pace = pacing.timed(call, count)
                done += count
                bar.update(count)
                if not disabled:
                    mean = float(np.mean(chain_devices.host_array(stat)[:count]))
                    bar.set_postfix({stat_name: f"{mean:.2f}"})
        except KeyboardInterrupt as err:
            raise pacing.interrupted(
                err, f"while annealing (AIS, {num_chains} chains): after {done} of "
                f"{num_steps} temperatures") from None
    log_weights = chain_devices.host_array(carry[2] if support.is_discrete else carry[0][3])
    final = (None if support.is_discrete
             else chain_devices.host_array(carry[0][0])[:num_chains])
    return AISRun(np.asarray(log_weights, dtype=np.float64)[:num_chains], log_z0, final)


def _check_start(model: Model, params, log_f: np.ndarray) -> None:
    """Raise before annealing when no chain starts where the energy is finite."""
    if not np.any(np.isfinite(log_f)):
        raise ValueError(
            f"method='ais': the energy is not finite at any of the {log_f.size} starting points "
            f"drawn from the base distribution on {model.support!r}, so no chain can carry "
            f"weight.\nParameter values:\n{format_params(params)}\nCheck the energy for "
            "log/division of non-positive values, or move the Gaussian base (base_loc, "
            "base_scale, in the unconstrained space) to where the energy is finite."
        )


class AISSummary(NamedTuple):
    """log Z from the weights: ``estimate`` (logmeanexp plus log Z0), the delta-method
    ``stderr``, the effective sample size ``ess`` and the Pareto ``khat`` of the log-weights
    kept."""

    estimate: float
    stderr: float
    ess: float
    khat: float
    num_kept: int


def summarize(log_weights: np.ndarray, log_z0: float) -> AISSummary:
    """logmeanexp of the weights, the delta-method standard error, the ESS and the Pareto k̂,
    computed on w / max(w) so that nothing overflows."""
    total = log_weights.size
    dropped = np.isnan(log_weights) | (log_weights == np.inf)
    kept = log_weights[~dropped]
    if kept.size == 0 or not np.any(np.isfinite(kept)):
        raise ValueError(
            f"method='ais': none of the {total} chains ended with a finite log-weight "
            f"({int(np.isnan(log_weights).sum())} NaN, {int((log_weights == np.inf).sum())} "
            f"+inf, {int((log_weights == -np.inf).sum())} -inf), so log Z cannot be estimated "
            "for these params. NaN or +inf comes from an energy NaN or -inf along a chain's "
            "path; -inf from an energy +inf wherever the chain went."
        )
    if dropped.any():
        warnings.warn(
            f"method='ais': {int(dropped.sum())} of {total} chains ended with a NaN or +inf "
            "log-weight (the energy was NaN or -inf on their path) and were dropped; the "
            f"estimate uses the other {kept.size} and is biased unless the region where the "
            "energy is NaN is negligible. Return +inf there instead if the density is zero.",
            RuntimeWarning,
            stacklevel=4,
        )
    top = float(np.max(kept))
    w = np.exp(kept - top)
    mean = float(np.mean(w))
    estimate = log_z0 + top + math.log(mean)
    n = w.size
    stderr = float(np.std(w, ddof=1)) / (math.sqrt(n) * mean) if n > 1 else math.inf
    ess = float(np.sum(w) ** 2 / np.sum(w**2))
    finite = kept[np.isfinite(kept)]
    # PSIS needs a tail to fit: with few weights k̂ is not defined
    khat = pareto_khat(finite)
    return AISSummary(float(estimate), float(stderr), ess, khat, int(n))


def _log_base(u, loc, scale):
    """log N(u; loc, diag(scale²)), normalized: the base's log Z0 is 0."""
    z = (u - loc) / scale
    return -0.5 * jnp.sum(z**2) - jnp.sum(jnp.log(scale)) - 0.5 * z.size * math.log(2 * math.pi)


@functools.partial(jax.jit, static_argnames=("model",))
def _init_continuous(model: Model, params, chain_keys, loc, scale):
    """u_0 ~ N(loc, scale²) per chain, with log f and its gradient; log-weights 0."""
    log_f = unconstrained_logdensity(model, params)

    def one(key):
        u = loc + scale * threefry.normal(threefry.fold_in(key, 0), loc.shape, loc.dtype)
        value, grad = jax.value_and_grad(log_f)(u)
        return u, value, grad

    u, value, grad = jax.vmap(one)(chain_keys)
    return u, value, grad, jnp.zeros_like(value)


@functools.partial(jax.jit, static_argnames=("model", "num_mcmc_steps", "num_counted",
                                             "num_pilot", "adapt"))
def _anneal_continuous(model: Model, params, carry, xs, count, *, chain_keys, loc, scale,
                       target_accept, num_mcmc_steps: int, num_counted: int, num_pilot: int,
                       adapt: bool):
    """The first ``count`` temperatures of ``xs`` (traced, :func:`_paced_scan`) for all chains:
    weight increment at the state before the transition, then MALA steps targeting γ_β.
    The chains are ``num_counted`` counted ones, ``num_pilot`` pilots and any padding of
    several devices' chain axis (read by no mean)."""
    log_f = unconstrained_logdensity(model, params)

    def grad_base(u):
        return -(u - loc) / scale**2

    def one_temperature(carry, x):
        (u, lf, glf, logw), log_step = carry
        step, beta, delta, valid = x
        lp0 = jax.vmap(lambda v: _log_base(v, loc, scale))(u)
        logw = logw + jnp.where(valid, delta * (lf - lp0), 0.0)

        def target(v):
            return (1 - beta) * _log_base(v, loc, scale) + beta * log_f(v)

        step_size = jnp.exp(log_step)

        def transition(key, u, lf, glf, lp0):
            # γ_β and its gradient are assembled from the cached log f, so a new β costs no
            # extra gradient evaluation.
            state = langevin.LangevinState(u, (1 - beta) * lp0 + beta * lf,
                                           (1 - beta) * grad_base(u) + beta * glf)

            def mcmc(state, k):
                state, info = langevin.mala_step(k, state, target, step_size)
                return state, info.acceptance_rate

            keys = threefry.split(threefry.fold_in(key, step), num_mcmc_steps)
            state, accept = jax.lax.scan(mcmc, state, keys)
            v = state.position
            # log f back from γ_β = (1-β) log p0 + β log f (β > 0 at every transition): saves
            # one gradient per temperature; the rounding, about eps·|log p0|/β, enters the next
            # increment multiplied by Δβ, and Δβ/β is at most about 1 on the sigmoid schedule.
            lf = (state.logdensity - (1 - beta) * _log_base(v, loc, scale)) / beta
            glf = (state.logdensity_grad - (1 - beta) * grad_base(v)) / beta
            return v, lf, glf, jnp.mean(accept)

        u, lf, glf, accept = jax.vmap(transition)(chain_keys, u, lf, glf, lp0)
        if adapt:
            pilot_accept = jnp.mean(accept[num_counted:num_counted + num_pilot])
            log_step = jnp.clip(log_step + (pilot_accept - target_accept), *_LOG_STEP_BOUNDS)
        return ((u, lf, glf, logw), log_step), jnp.mean(accept[:num_counted])

    return _paced_scan(one_temperature, carry, xs, count)


@functools.partial(jax.jit, static_argnames=("model",))
def _init_discrete(model: Model, params, chain_keys):
    """x_0 uniform on the support per chain, with -E(x_0); log-weights 0."""
    low, high = model.support.values
    shape = model.support.event_shape
    dtype = jnp.result_type(float)

    def one(key):
        on = threefry.bernoulli(threefry.fold_in(key, 0), 0.5, shape)
        x = jnp.where(on, high, low).astype(dtype)
        return x, -model.energy(params, x)

    x, neg_energy = jax.vmap(one)(chain_keys)
    return x, neg_energy, jnp.zeros_like(neg_energy)


@functools.partial(jax.jit, static_argnames=("model", "num_mcmc_steps", "blocks"))
def _anneal_discrete(model: Model, params, carry, xs, count, *, chain_keys,
                     num_mcmc_steps: int, blocks: structure.GibbsBlocks | None = None):
    """The first ``count`` temperatures of ``xs`` (traced, :func:`_paced_scan`) for all chains:
    weight increment, then Gibbs sweeps targeting γ_β(x) = -β E(x) (the uniform base is a
    constant): the blocked scan over the colours ``blocks`` of the energy's interaction graph
    at ``params`` (:mod:`unnorm.samplers.structure`), or the sequential scan (None)."""
    spec = SAMPLERS["gibbs"]
    kernel = build_kernel(spec, 0, model.support.values,
                          gibbs.with_blocks(check_tuning(spec, {}), blocks))

    def one_temperature(carry, x):
        positions, neg_energy, logw = carry
        step, beta, delta, valid = x
        logw = logw + jnp.where(valid, delta * neg_energy, 0.0)

        def target(y):
            return -beta * model.energy(params, y)

        # the chain runner of un.sample and the estimators; starting the states costs one
        # energy per chain, against a sequential sweep's one per site
        states = chain_runner.start(kernel, positions, target, chain_keys)
        temperature_keys = jax.vmap(lambda key: threefry.fold_in(key, step))(chain_keys)
        states, infos = chain_runner.advance(kernel, states, target, temperature_keys,
                                             jnp.arange(num_mcmc_steps))
        # the state carries -βE at the final point exactly; dividing by β > 0 is exact to an
        # ulp and spares an energy evaluation
        positions = jax.vmap(kernel.position)(states)
        neg_energy = jax.vmap(kernel.logdensity)(states) / beta
        return (positions, neg_energy, logw), jnp.mean(infos.flip_rate)

    return _paced_scan(one_temperature, carry, xs, count)


def _paced_scan(one_temperature, carry, xs, count):
    """``lax.scan(one_temperature, carry, xs)`` over the first ``count`` entries of ``xs``
    only: ``count`` is traced, so one program serves every count (:mod:`unnorm.pacing`).
    Returns the carry and the per-temperature statistic (0 past ``count``)."""
    return pacing.stored_loop(
        lambda carry, index: one_temperature(carry, tuple(a[index] for a in xs)), carry, count,
        length=xs[0].shape[0])
