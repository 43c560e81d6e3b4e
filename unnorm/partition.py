"""The normalizing constant ``log Z(θ) = log ∫ exp(-E(x; θ)) dx`` (Song & Kingma 2021, eq. 2; a sum
over a
discrete support).

``method="exact"`` enumerates every configuration of a binary or spin support in chunks of
2**14, combining chunks with a running float64 log-sum-exp so that nothing overflows. Energies are
evaluated in JAX's default precision: enable float64 (``jax.config.update("jax_enable_x64",
True)``) for agreement to 1e-10 rather than about 1e-6.

``method="ais"`` estimates log Z by annealed importance sampling (Neal 2001) on any support:
chains move from a normalized base distribution to ``exp(-E)`` along a geometric path of
intermediate densities, with MALA steps (continuous supports, in the unconstrained space) or
Gibbs sweeps (binary and spin supports), and their importance weights average to ``Z``.

Examples
--------
>>> import jax.numpy as jnp
>>> import unnorm as un
>>> # the three-unit example of Beigy's lecture slides: H = -x1x2 - x1x3 + 2 x2x3 + x2, Z = 172.420
>>> model = un.models.ising(J=jnp.array([-1.0, -1.0, 2.0]), h=jnp.array([0.0, 1.0, 0.0]))
>>> lz = un.log_partition(model, model.params, method="exact")
>>> round(float(jnp.exp(lz.estimate)), 2)
172.42
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from .ais import SCHEDULES
from .ais_runs import (  # noqa: F401 (the thresholds' home used to be this module)
    MIN_ESS_FRACTION,
    PARETO_K_THRESHOLD,
    RISE_THRESHOLD,
    anneal_with_doublings,
    pareto_k_threshold,
    warn_heavy_weights,
    warn_still_rising,
)
from .diagnostics import ConvergenceWarning
from .improper import weights_problem
from .model import Model
from .samplers import devices as chain_devices

__all__ = ["LogPartition", "log_partition", "METHODS", "MAX_EXACT_UNITS"]

METHODS = ("exact", "ais")
MAX_EXACT_UNITS = 20
_CHUNK = 2**14


class LogPartition(NamedTuple):
    """An estimate of ``log Z`` with its standard error (0.0 for exact enumeration); for
    ``method="ais"`` also the effective sample size of the importance weights, their Pareto
    ``pareto_k`` (PSIS), the number of independent runs pooled and the number of temperatures
    of the run returned, after any ``max_doublings`` (None for exact)."""

    estimate: float
    stderr: float
    method: str
    ess: float | None = None
    pareto_k: float | None = None
    num_replicates: int | None = None
    num_temperatures: int | None = None


@functools.partial(jax.jit, static_argnames=("model", "size", "total"))
def _chunk_logsumexp(model: Model, params, start, size: int, total: int):
    """log Σ exp(-E) over configurations start .. start+size-1 (those < total)."""
    index = start + jnp.arange(size, dtype=jnp.uint32)
    configs = model.support.configurations(index).astype(jnp.result_type(float))
    log_weights = -jax.vmap(lambda x: model.energy(params, x))(configs)
    valid = index < total
    invalid_value = jnp.isnan(log_weights) | (log_weights == jnp.inf)
    log_weights = jnp.where(valid, log_weights, -jnp.inf)
    return jax.scipy.special.logsumexp(log_weights), jnp.any(valid & invalid_value)


def log_partition(
    model: Model,
    params: dict | None = None,
    method: str = "exact",
    *,
    key=None,
    max_units: int = MAX_EXACT_UNITS,
    num_chains: int = 256,
    num_temperatures: int = 1000,
    num_replicates: int = 1,
    num_mcmc_steps: int = 1,
    step_size: float | None = None,
    adapt_step_size: bool = True,
    target_accept: float = 0.574,
    base_loc=None,
    base_scale=None,
    progress_bar: bool = True,
    schedule: str | None = None,
    max_doublings: int = 0,
    devices=None,
) -> LogPartition:
    r"""Log normalizing constant ``log Z(θ)`` of ``p(x; θ) ∝ exp(-E(x; θ))`` (Song & Kingma 2021,
    eq. 2).

    ``method="exact"`` enumerates a binary or spin support. ``method="ais"`` is annealed
    importance sampling (Neal 2001) for any support. Each of ``num_chains`` independent chains
    starts from a normalized base ``p0`` and passes through the densities

        log γ_β(u) = (1 - β) log p0(u) + β log f(u),    0 = β_0 < β_1 < ... < β_K = 1,

    ``K = num_temperatures - 1``, with ``f = exp(-E)``. Its log-weight is

        log w = Σ_{k=1..K} (β_k - β_{k-1}) [log f(u_{k-1}) - log p0(u_{k-1})],

    ``u_0 ~ p0`` and ``u_k`` drawn by MCMC transitions that leave ``γ_{β_k}`` invariant; then
    ``E[w] = Z / Z0`` and the estimate is ``log Z0 + log mean(w)``.

    - **Continuous supports** (real, positive, interval, any event shape): the chains live in
      the unconstrained space ``u`` of :func:`unnorm.samplers.unconstrained_logdensity`, where
      ``log f(u) = -E(T(u)) + log|det J_T(u)|`` has the same integral ``Z``. The base is the
      Gaussian ``N(base_loc, diag(base_scale²))`` (``log Z0 = 0``) and the transitions are
      ``num_mcmc_steps`` MALA steps per temperature.
    - **Binary and spin supports** (any size): the base is uniform (``log Z0 = d log 2``) and
      the transitions are ``num_mcmc_steps`` Gibbs sweeps per temperature: the blocked scan
      over a colouring of the energy's interaction graph where one is certified
      (:mod:`unnorm.samplers.structure`), else the sequential scan.

    On continuous supports the β are the sigmoid schedule of Grosse, Ghahramani & Adams (2015),
    ``β_k ∝ σ(δ (2k/K - 1))`` rescaled to [0, 1], δ = 4: it is denser at both ends, where
    ``γ_β`` changes fastest when the target is narrower than the base (near β = 0) or wider
    (near β = 1); which of the two holds is rarely known in advance. On binary and spin
    supports they are equal steps, ``β_k = k/K``: a phase transition in the middle of the path
    (the Ising model's ordering) needs the temperatures the sigmoid spends on its ends.

    A run whose chains lag behind ``γ_β`` is biased low, and its weights can look well balanced
    (the chains all miss the same configurations): the sign is an estimate that still rises
    when ``num_temperatures`` grows. ``max_doublings`` checks it: it runs again with twice the
    temperatures (fresh chains) while the estimate rises by more than one standard error of the
    difference, and warns when the last doubling still raised it by more than two.

    Parameters
    ----------
    model : Model
        Any model for ``"ais"``; a ``binary`` or ``spin`` support for ``"exact"``.
    params : dict, optional
        Parameter values; default ``model.params``.
    method : str
        ``"exact"``: enumerate all ``2**d`` configurations (d <= ``max_units``).
        ``"ais"``: annealed importance sampling.
    key : jax PRNG key
        Required by ``"ais"``; the same key gives the same estimate. Unused by ``"exact"``.
    max_units : int
        ``"exact"`` only: largest number of units enumerated (default 20).
    num_chains : int
        ``"ais"``: independent annealing chains, run vectorized (default 256).
    num_temperatures : int
        ``"ais"``: number of β values including 0 and 1 (default 1000, at least 2; with 2,
        AIS is plain importance sampling from the base).
    num_replicates : int
        ``"ais"``: independent runs of ``num_chains`` chains each (keys ``fold_in(key, r)``);
        the estimate pools every chain's weight, and with 2 or more runs the standard error is
        the spread of the runs' estimates, ``sd / √num_replicates``, which stays honest when
        the weights are too heavy-tailed for the delta method (default 1: one run, the
        delta-method standard error).
    num_mcmc_steps : int
        ``"ais"``: MALA steps or Gibbs sweeps per intermediate temperature (default 1).
    step_size : float, optional
        ``"ais"``, continuous supports: MALA's ε (Song & Kingma 2021, eq. 6) at the first
        temperature;
        default ``min(base_scale) · d^(-1/6)``, the scaling of the optimal ε on a Gaussian.
    adapt_step_size : bool
        ``"ais"``, continuous supports: after each temperature, multiply ε by
        ``exp(mean acceptance - target_accept)`` (default True). The acceptance is that of
        separate pilot chains (``min(32, max(8, num_chains // 8))`` of them, whose weights are
        discarded): the step size then never depends on the past of a counted chain, so every
        counted transition is a fixed kernel that leaves ``γ_β`` invariant and the weights stay
        exactly unbiased. False keeps ε fixed (and runs no pilot chains).
    target_accept : float
        ``"ais"``, continuous supports: acceptance rate the adaptation aims at (default 0.574,
        MALA's optimum, Roberts & Rosenthal 1998).
    base_loc, base_scale : float or array of the event shape, optional
        ``"ais"``, continuous supports: mean and standard deviations of the Gaussian base, in
        the unconstrained space (``u = log x`` on a positive support, a logit on an interval);
        default 0 and 1. A base close to the target (e.g. a Laplace approximation) gives
        weights of lower variance, so fewer temperatures for the same standard error.
    progress_bar : bool
        ``"ais"``: show a tqdm bar over the temperatures (off when ``CI`` is set).
    schedule : {"sigmoid", "linear"}, optional
        ``"ais"``: the β schedule; default ``"linear"`` on binary and spin supports,
        ``"sigmoid"`` on continuous ones.
    max_doublings : int
        ``"ais"``: at most this many further runs, each with twice the temperatures of the one
        before and fresh chains (keys from ``key``, disjoint from the first run's), while the
        estimate rises by more than one standard error of the difference; the result is the
        last run's (default 0: one run, no check). Doubling ``j`` costs ``2**j`` first runs, so
        up to ``2**(max_doublings + 1) - 1`` in all (3 for one doubling, 7 for two).
    devices : None, int or list of jax.Device
        ``"ais"``: the devices the chains are split over, as :func:`unnorm.sample` splits its
        own (along the chain axis, with ``jax.sharding``; padded with copies of the last chain
        to a multiple of the device count). None (default): all of ``jax.devices()``; an int
        ``n``: the first ``n`` of them; or a list of devices. Each chain's keys are its own
        whatever the device count, so the estimate and its standard error are one device's,
        up to the rounding of the partitioned program. When the devices belong to several
        processes (``jax.distributed``), every process makes the same call, anneals the chains
        of its own devices and returns the same estimate; ``devices`` must then include a
        device of the calling process.

    Returns
    -------
    LogPartition
        ``estimate`` (float), ``stderr`` (0.0 for exact), ``method``, and ``ess`` (``"ais"``:
        effective sample size ``(Σw)² / Σw²`` of the weights; None for exact). The AIS
        ``stderr`` is the delta-method ``sd(w) / (√N mean(w))``, ``N`` the chains kept; it is
        ``inf`` when only one chain is kept. It is unreliable when a few weights dominate, which
        ``pareto_k`` (the Pareto k̂ of the log-weights, ArviZ's PSIS) and ``ess`` show: a
        :class:`~unnorm.diagnostics.ConvergenceWarning` says so when k̂ exceeds
        ``min(1 - 1/log10 S, 0.7)`` for S weights (Vehtari et al. 2024; 0.45 for 64 chains, 0.58
        for 256) or the ESS is under 10% of the chains. ``num_replicates`` records the runs pooled
        and ``num_temperatures`` the temperatures of the run returned (``"ais"``; None for exact).

    Raises
    ------
    ValueError
        A bad argument (named in the message); ``"ais"`` without ``key``; ``"exact"`` on a
        continuous or too large support; an energy NaN or -inf where ``"exact"`` enumerates;
        ``"ais"`` when the energy is not finite at any starting point or no chain ends with a
        finite log-weight.

    Warns
    -----
    RuntimeWarning
        ``"ais"``: some chains ended with a NaN or +inf log-weight (an energy NaN or -inf on
        their path); they are dropped and the estimate uses the others. A log-weight of -inf
        (an energy of +inf) is a weight of zero and is kept.
    ConvergenceWarning
        ``"ais"``: the weights are heavy-tailed (Pareto k̂ above its threshold, or ESS under
        10% of the chains): the delta-method standard error understates the error (an
        improper density gives such weights too).
        ``"ais"`` with ``max_doublings``: the last doubling of ``num_temperatures`` still raised
        the estimate by more than two standard errors of the difference, so the estimate is
        probably biased low.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import unnorm as un
    >>> model = un.models.boltzmann(W=jnp.zeros(3), b=jnp.zeros(3))  # uniform on {0,1}^3
    >>> round(un.log_partition(model).estimate, 6) == round(3 * float(jnp.log(2.0)), 6)
    True

    A Gaussian with precision ``P`` has ``log Z = (d/2) log 2π - ½ log det P``:

    >>> prec = jnp.array([[2.0, 0.6], [0.6, 1.0]])
    >>> gauss = un.models.gaussian(2, precision=prec)
    >>> lz = un.log_partition(gauss, method="ais", key=jax.random.key(0), num_chains=64,
    ...                       num_temperatures=100, progress_bar=False)
    >>> truth = float(jnp.log(2 * jnp.pi) - 0.5 * jnp.linalg.slogdet(prec)[1])
    >>> abs(lz.estimate - truth) < 4 * lz.stderr + 0.01, lz.stderr < 0.05
    (True, True)
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be an unnorm.Model; got {type(model).__name__}.")
    _checks.check_choice(method, "method", METHODS)
    if key is not None:
        key = _checks.check_key(key)
    params = model.params if params is None else model.check_params(params)
    if method == "ais":
        if key is None:
            raise ValueError(
                "method='ais' draws random numbers and needs key=, a JAX PRNG key such as "
                "jax.random.key(0) (the same key gives the same estimate); got key=None."
            )
        num_replicates = _checks.check_int(num_replicates, "num_replicates", 1)
        chosen = chain_devices.require_local(chain_devices.check_devices(devices))
        num_temperatures = _checks.check_int(num_temperatures, "num_temperatures", 2,
                                             _checks.INT32_MAX)
        max_doublings = _checks.check_int(max_doublings, "max_doublings", 0, 30)
        if schedule is not None:
            _checks.check_choice(schedule, "schedule", SCHEDULES)
        if num_temperatures << max_doublings > _checks.INT32_MAX:
            raise ValueError(
                f"max_doublings={max_doublings} would anneal over num_temperatures * "
                f"2**max_doublings = {num_temperatures << max_doublings} temperatures; the "
                f"limit is {_checks.INT32_MAX}. Lower max_doublings or num_temperatures.")
        stage = anneal_with_doublings(
            model, params, key, num_temperatures, num_replicates, max_doublings,
            dict(num_chains=num_chains, num_mcmc_steps=num_mcmc_steps, step_size=step_size,
                 adapt_step_size=adapt_step_size, target_accept=target_accept,
                 base_loc=base_loc, base_scale=base_scale, progress_bar=progress_bar,
                 schedule=schedule, devices=chosen))
        warn_heavy_weights(stage.pooled, num_replicates)
        if stage.previous is not None:
            warn_still_rising(stage, max_doublings)
        if not model.support.is_discrete:
            problem = weights_problem(stage.final_positions, model.support.event_shape,
                                      stage.pooled.khat)
            if problem:
                warnings.warn(problem, ConvergenceWarning, stacklevel=2)
        return LogPartition(stage.pooled.estimate, stage.stderr, "ais", stage.pooled.ess,
                            stage.pooled.khat, num_replicates, stage.num_temperatures)
    return _exact(model, params, _checks.check_int(max_units, "max_units", 1))


def _exact(model: Model, params, max_units: int) -> LogPartition:
    support = model.support
    if not support.is_discrete:
        raise ValueError(
            f"method='exact' enumerates discrete supports (binary, spin); the model's support "
            f"is {support!r}, which cannot be enumerated. Use method='ais' (annealed importance "
            "sampling) for continuous models."
        )
    if support.size > min(max_units, 30):
        raise ValueError(
            f"method='exact' would enumerate 2**{support.size} configurations of "
            f"{support!r}; the limit is {min(max_units, 30)} units (max_units). Use "
            "method='ais' (annealed importance sampling) for larger models."
        )
    total = 2**support.size
    running = -np.inf
    size = min(_CHUNK, total)
    for start in range(0, total, size):
        stop = min(start + size, total)
        lse, invalid = _chunk_logsumexp(model, params, jnp.uint32(start), size, total)
        if bool(invalid):
            raise ValueError(
                "the energy is NaN or -inf at some configuration(s) among "
                f"{start}..{stop - 1} of {support!r}; log Z is undefined for these params."
            )
        running = float(np.logaddexp(running, float(lse)))
    return LogPartition(running, 0.0, "exact")
