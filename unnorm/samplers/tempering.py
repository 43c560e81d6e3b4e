"""Parallel tempering (replica exchange) over any base kernel, in the BlackJAX shape.

Each chain carries K replicas at inverse temperatures ``1 = β_0 > β_1 > ... > β_{K-1} > 0``;
replica k targets the tempered density ``p_k(u) ∝ p(u)^β_k``, whose log-density is
``β_k log p(u)`` with ``log p`` the log-density the other kernels target (on a constrained
support: of the unconstrained variable, Jacobian included). The β = 1 replica targets the
model itself; the hot ones see flattened energy barriers and cross them. One step
(Swendsen & Wang 1986; Geyer 1991; the review of Earl & Deem 2005) is

1. one step of the base kernel for every replica under its own tempered log-density
   (vectorized over the replicas), each replica adapting its own step size during warmup;
2. an exchange of positions between adjacent replicas k and k + 1, accepted with probability

       min(1, exp((β_k − β_{k+1}) (log p(x_{k+1}) − log p(x_k)))),

   the Metropolis ratio of the swap under the joint target ``∏_k p(x_k)^β_k``. The pairs
   alternate deterministically, (0, 1), (2, 3), ... at even steps and (1, 2), (3, 4), ... at odd
   ones (Okabe et al. 2001): Syed et al. (2022) show that this non-reversible scheme moves a
   state up and down the ladder in O(K) steps where random pair choices take O(K²).

Each composition keeps the joint target invariant, so the β = 1 replica's draws are draws of
the model: they are the chain's positions. The swap acceptance probability of every adjacent
pair is reported at each step (``swap_acceptance_rate``), so its mean over draws estimates the
pair's swap rate; a pair whose rate is near 0 needs more temperatures between its two.

For a continuous support, ``p(u)^β`` must be integrable at the smallest β: it is for targets
with Gaussian (or lighter) tails, not for heavy-tailed ones (``|u|^-2`` tempered below
β = 1/2 is not), for which ``min_beta`` must stay above that bound.

Example
-------
>>> import jax
>>> import unnorm as un
>>> model = un.models.ising_chain(6, coupling=1.0)
>>> idata = un.sample(model, key=jax.random.key(0), sampler="tempering", num_temperatures=4,
...                   num_chains=2, num_warmup=50, num_samples=100, progress_bar=False,
...                   warn=False)
>>> idata.sample_stats["swap_acceptance_rate"].shape          # one rate per adjacent pair
(2, 100, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks, threefry
from .spec import OPTION_CHECKS, Kernel, SamplerSpec

__all__ = ["TemperingState", "TemperingInfo", "geometric_betas", "exchange", "TEMPERING"]

#: the default ladder: 8 inverse temperatures, geometric from 1 down to 0.1
NUM_TEMPERATURES = 8
MIN_BETA = 0.1

_NAME = "tempering"


class TemperingState(NamedTuple):
    """The replicas' base-kernel states, every leaf with a leading replica axis of length K
    (replica 0 is the β = 1 one), and the number of steps taken: its parity picks the pairs
    that may swap."""

    replicas: Any
    step: jax.Array


class TemperingInfo(NamedTuple):
    """``acceptance_rate``: the β = 1 replica's base step; ``is_divergent``: any replica's;
    ``swap_acceptance_rate`` (K - 1,): the acceptance probability of a swap of each adjacent
    pair at this step's positions (the pairs of the other parity, not attempted at this step,
    get the probability their swap would have had); ``is_swapped`` (K - 1,): the swaps made;
    ``replicas``: the base kernel's info of every replica."""

    acceptance_rate: jax.Array
    is_divergent: jax.Array
    swap_acceptance_rate: jax.Array
    is_swapped: jax.Array
    replicas: Any


def geometric_betas(num_temperatures: int, min_beta: float) -> tuple[float, ...]:
    """The geometric ladder ``β_k = min_beta^(k / (K - 1))``, k = 0 .. K - 1: equal ratios
    between neighbours, which for a target whose energy variance scales as β⁻² (a Gaussian)
    gives every adjacent pair the same swap rate (Kofke 2002).

    Example
    -------
    >>> [round(b, 3) for b in geometric_betas(4, 0.125)]
    [1.0, 0.5, 0.25, 0.125]
    """
    num = _checks.check_int(num_temperatures, "num_temperatures", 2)
    low = _checks.check_probability(min_beta, "min_beta")
    return tuple(float(low ** (k / (num - 1))) for k in range(num))


def exchange(key, logdensities: jax.Array, betas: jax.Array,
             parity) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Swaps of adjacent replicas' positions, the pairs (k, k + 1) with ``k % 2 == parity``.

    Parameters
    ----------
    key : jax PRNG key
    logdensities : array (K,)
        ``log p(x_k)`` of each replica's position, untempered.
    betas : array (K,)
        The inverse temperatures, decreasing.
    parity : int or array
        0 for the even pairs (0, 1), (2, 3), ...; 1 for the odd ones.

    Returns
    -------
    order : int array (K,)
        Replica k takes the position replica ``order[k]`` had.
    probability : array (K - 1,)
        ``min(1, exp((β_k − β_{k+1}) (log p(x_{k+1}) − log p(x_k))))`` of every pair, attempted
        or not (0 where the ratio is not finite).
    accepted : bool array (K - 1,)

    Example
    -------
    >>> import jax, jax.numpy as jnp
    >>> order, probability, accepted = exchange(
    ...     jax.random.key(0), jnp.array([-5.0, 0.0, -1.0]), jnp.array([1.0, 0.5, 0.25]), 0)
    >>> order.tolist(), probability.tolist()      # the hotter replica's point is likelier
    ([1, 0, 2], [1.0, 0.7788007855415344])
    """
    num = betas.shape[0]
    log_ratio = (betas[:-1] - betas[1:]) * (logdensities[1:] - logdensities[:-1])
    finite = jnp.isfinite(log_ratio)
    probability = jnp.where(finite, jnp.exp(jnp.minimum(log_ratio, 0.0)), 0.0)
    attempted = jnp.arange(num - 1) % 2 == parity
    uniforms = threefry.uniform(key, (num - 1,), logdensities.dtype)
    accepted = attempted & finite & (jnp.log(uniforms) < log_ratio)
    # Pairs of one parity are disjoint: a replica is in at most one accepted swap, with the
    # replica above it (up) or below it (down).
    none = jnp.zeros(1, bool)
    up, down = jnp.concatenate([accepted, none]), jnp.concatenate([none, accepted])
    order = jnp.arange(num) + up.astype(jnp.int32) - down.astype(jnp.int32)
    return order, probability, accepted


# ---- the base kernel ---------------------------------------------------------------------------

def _registry():
    """The sampler registry, looked up when a kernel is built rather than imported with this
    module: the registry imports this module to list it, so a module-level import would be a
    cycle. Looked up at build time (plain Python, before anything is traced), every registered
    sampler is a possible base, including ones registered after this module."""
    from . import registry

    return registry


def _check_base(value, name: str) -> str:
    if value == _NAME:
        raise ValueError(f"{name}={_NAME!r} cannot be a base of parallel tempering: tempering "
                         "runs a base kernel per replica, and tempering a tempered chain adds "
                         "nothing; give one of the other samplers, e.g. 'mala' or 'gibbs'.")
    samplers = [n for n in _registry().SAMPLERS if n != _NAME]
    return _checks.check_choice(value, name, samplers)


def _check_betas(value, name: str) -> tuple[float, ...]:
    """A ladder 1 = β_0 > β_1 > ... > β_{K-1} > 0, K >= 2, as a tuple of floats (hashable)."""
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 1 or array.size < 2:
        raise ValueError(f"{name} must be a sequence of at least 2 inverse temperatures, "
                         f"1 = β_0 > β_1 > ... > 0; got {value!r}.")
    betas = tuple(float(b) for b in array)
    if betas[0] != 1.0:
        raise ValueError(f"{name} must start at 1 (the model itself is the β = 1 replica); "
                         f"got {name}[0] = {betas[0]!r} in {betas}.")
    for k in range(1, len(betas)):
        if not betas[k] < betas[k - 1]:
            raise ValueError(f"{name} must decrease strictly from 1; got {name}[{k}] = "
                             f"{betas[k]!r} after {name}[{k - 1}] = {betas[k - 1]!r} in {betas}.")
    if not betas[-1] > 0:
        raise ValueError(f"{name} must stay > 0 (β = 0 is a flat density, improper on a "
                         f"continuous support); got {name}[{len(betas) - 1}] = {betas[-1]!r}.")
    return betas


def _ladder(tuning: dict) -> tuple[float, ...]:
    if tuning["betas"] is not None:
        given = [k for k in ("num_temperatures", "min_beta") if tuning[k] is not None]
        if given:
            raise ValueError(f"betas={tuning['betas']} fixes the ladder; give either betas or "
                             f"{' and '.join(given)}, not both.")
        return tuning["betas"]
    num = tuning["num_temperatures"]
    low = tuning["min_beta"]
    return geometric_betas(NUM_TEMPERATURES if num is None else num,
                           MIN_BETA if low is None else low)


def _base_spec(registry, tuning: dict, discrete: bool, support=None) -> SamplerSpec:
    """The base sampler's spec: ``tuning["base"]``, by default Gibbs on discrete supports and
    MALA on continuous ones, checked against the support."""
    name = tuning["base"] or ("gibbs" if discrete else "mala")
    spec = registry.SAMPLERS[name]
    if spec.discrete is not None and spec.discrete != discrete:
        kinds = "binary and spin" if spec.discrete else "continuous"
        where = f" such as the model's {support!r}" if support is not None else ""
        valid = " or ".join(repr(n) for n in registry.sampler_names(discrete) if n != _NAME)
        raise ValueError(f"sampler {_NAME!r}: base {name!r} works on {kinds} supports only, "
                         f"not on {'discrete' if discrete else 'continuous'} ones{where}; use "
                         f"base={valid}.")
    return spec


def _base_tuning(registry, spec: SamplerSpec, tuning: dict) -> dict:
    """The options given for the base (those of :data:`~unnorm.samplers.spec.OPTION_CHECKS`
    that are not None), checked by the base's spec and merged over its defaults."""
    given = {k: tuning[k] for k in OPTION_CHECKS if tuning.get(k) is not None}
    try:
        return registry.check_tuning(spec, given)
    except (TypeError, ValueError) as err:
        raise type(err)(f"sampler {_NAME!r} with base={spec.name!r}: {err}") from None


def _prepare(model, params, tuning: dict) -> dict:
    """Resolve the base and its options for ``model`` (the base's own ``prepare`` included:
    Gibbs' blocked scan), and check the ladder, before anything is built."""
    registry = _registry()
    tuning = dict(tuning)
    spec = _base_spec(registry, tuning, model.support.is_discrete, model.support)
    if spec.check is not None:
        spec.check(model)
    base = _base_tuning(registry, spec, tuning)
    if spec.prepare is not None:
        # Tempering scales the log-density by β > 0: the interaction graph Gibbs colours, and
        # anything else read off the energy's structure, is the same at every temperature.
        base = spec.prepare(model, params, base)
    _ladder(tuning)
    tuning["base"] = spec.name
    tuning["base_tuning"] = tuple(sorted(base.items(), key=lambda item: item[0]))
    return tuning


#: From jax 0.12 on, LLVM's optimization pipeline took more than ten minutes over the compiled
#: chunk of 4 or more replicas (2 compiled in a second; jax 0.10 compiles 8 in about 2 s); at
#: XLA's backend optimization level 0 it compiles in under a second.
_COMPILER_OPTIONS = ((("xla_backend_optimization_level", 0),)
                     if tuple(jax.__version_info__[:2]) >= (0, 12) else ())


# ---- the kernel --------------------------------------------------------------------------------

def _kernel(tuning: dict, num_warmup: int, values) -> Kernel:
    registry = _registry()
    spec = _base_spec(registry, tuning, values is not None)
    if tuning.get("base_tuning") is not None:
        base_tuning = dict(tuning["base_tuning"])      # resolved by _prepare
    else:
        # built without a model (build_sampler, the estimators' chains): no prepare step, so
        # Gibbs' scan="auto" is the sequential scan, exact for every energy
        base_tuning = _base_tuning(registry, spec, tuning)
    base = registry.build_kernel(spec, num_warmup, values, base_tuning)
    ladder = _ladder(tuning)
    num = len(ladder)

    def tempered(logdensity_fn: Callable, beta) -> Callable:
        # further arguments (a noise level) pass through to the model's log-density
        return lambda u, *args: beta * logdensity_fn(u, *args)

    def each_replica(fn, *args):
        """``fn(*args_k, β_k)`` for every replica k, vectorized."""
        return jax.vmap(fn)(*args, jnp.asarray(ladder))

    def init(position, logdensity_fn, key):
        keys = threefry.split(key, num)
        replicas = each_replica(
            lambda k, beta: base.init(position, tempered(logdensity_fn, beta), k), keys)
        if base.get_step_size is not None:
            # p^β is 1/√β times wider than p where p is near Gaussian: each replica starts at
            # the base's step size scaled so, and adapts from there during warmup.
            widths = jnp.sqrt(jnp.asarray(ladder))
            replicas = base.set_step_size(replicas, base.get_step_size(replicas) / widths)
        return TemperingState(replicas, jnp.zeros((), jnp.int32))

    def step(key, state: TemperingState, logdensity_fn, warmup):
        keys = threefry.split(key, num + 1)
        replicas, infos = each_replica(
            lambda k, s, beta: base.step(k, s, tempered(logdensity_fn, beta), warmup),
            keys[:num], state.replicas)
        betas = jnp.asarray(ladder)
        # β_k > 0: a state's cached log-density over its β is the untempered log p
        logdensities = jax.vmap(base.logdensity)(replicas) / betas
        order, probability, accepted = exchange(keys[num], logdensities, betas, state.step % 2)
        positions = jax.vmap(base.position)(replicas)
        # The positions move, each replica keeps its own adaptation (step size) and has its
        # cached log-density (and gradient) re-evaluated at its own temperature, so the next
        # step's Metropolis ratios compare two points under one target. Every replica is
        # refreshed: those that kept their position recompute the same values, and under vmap
        # a select would compute both branches anyway.
        replicas = each_replica(
            lambda s, u, beta: base.refresh(s, tempered(logdensity_fn, beta), u),
            replicas, positions[order])
        info = TemperingInfo(
            acceptance_rate=infos.acceptance_rate[0],
            is_divergent=jnp.any(infos.is_divergent),
            swap_acceptance_rate=probability,
            is_swapped=accepted,
            replicas=infos,
        )
        return TemperingState(replicas, state.step + 1), info

    def cold(tree):
        return jax.tree_util.tree_map(lambda leaf: leaf[0], tree)

    def stats(state: TemperingState, info: TemperingInfo) -> dict:
        out = dict(base.stats(cold(state.replicas), cold(info.replicas)))
        out["diverging"] = info.is_divergent
        out["swap_acceptance_rate"] = info.swap_acceptance_rate
        out["replica_acceptance_rate"] = info.replicas.acceptance_rate
        if base.get_step_size is not None:
            out["replica_step_size"] = base.get_step_size(state.replicas)
        return out

    def refresh(state: TemperingState, logdensity_fn, position=None) -> TemperingState:
        positions = jax.vmap(base.position)(state.replicas)
        if position is not None:
            # the point is the cold replica's; the hot ones keep theirs
            positions = positions.at[0].set(position)
        return state._replace(replicas=each_replica(
            lambda s, u, beta: base.refresh(s, tempered(logdensity_fn, beta), u),
            state.replicas, positions))

    get_step_size = set_step_size = None
    if base.get_step_size is not None:
        # (..., K) step sizes, one per replica: the base's accessors read and write a field of
        # its state, whatever the leading axes.
        def get_step_size(state):
            return base.get_step_size(state.replicas)

        def set_step_size(state, value):
            shape = jnp.shape(base.get_step_size(state.replicas))
            return state._replace(replicas=base.set_step_size(
                state.replicas, jnp.broadcast_to(value, shape)))

    return Kernel(
        _NAME, values is not None, base.uses_gradient, init, step,
        lambda state: state._replace(replicas=jax.vmap(base.finalize)(state.replicas)),
        position=lambda state: base.position(cold(state.replicas)),
        # β_0 = 1: the cold replica's cached log-density is the model's
        logdensity=lambda state: base.logdensity(cold(state.replicas)),
        stats=stats,
        refresh=refresh,
        get_step_size=get_step_size,
        set_step_size=set_step_size,
        compiler_options=_COMPILER_OPTIONS,
        # each chain carries its replicas: the base's blocks of chains serve as they are
        chain_block=base.chain_block,
    )


_OWN_DEFAULTS = {"base": None, "num_temperatures": None, "min_beta": None, "betas": None}
_OWN_CHECKS = {
    "base": _check_base,
    "num_temperatures": lambda v, k: _checks.check_int(v, k, 2),
    "min_beta": _checks.check_probability,
    "betas": _check_betas,
}
#: every option a base can take, None meaning "the base's default"; an option the chosen base
#: does not take is refused by the base's own check
_BASE_DEFAULTS = dict.fromkeys(OPTION_CHECKS)

#: ``sampler="tempering"``: parallel tempering over a base kernel, on any support
TEMPERING = SamplerSpec(
    name=_NAME,
    description="parallel tempering (replica exchange) over a base sampler, any support",
    discrete=None,
    # the built Kernel carries its base's flag (mala's gradients are checked, Gibbs has none)
    uses_gradient=False,
    defaults={**_OWN_DEFAULTS, **_BASE_DEFAULTS},
    checks={**_OWN_CHECKS, **OPTION_CHECKS},
    build=_kernel,
    has_step_size=True,
    # each step already takes one base step per replica
    thinning=1,
    divergence_advice=("A replica's energy (or its gradient) was not finite at rejected "
                       "proposals; the hot replicas range further than the model's: check the "
                       "energy's domain, or declare a support that matches it."),
    prepare=_prepare,
)
