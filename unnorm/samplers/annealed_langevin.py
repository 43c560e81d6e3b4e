"""Annealed Langevin dynamics for noise-conditional energies (Song & Ermon 2019, Algorithm 1).

A noise-conditional energy ``E(x; θ, σ)`` models the data convolved with Gaussian noise of scale
σ, ``q_σ = p ∗ N(0, σ² I)``, at every level of a ladder ``σ_1 > … > σ_L``: multi-level denoising
score matching, ``un.estimators.DSM(sigma=[...])``, trains such an energy when its function
takes a ``sigma`` keyword. Plain Langevin dynamics on the smallest level mixes badly between
separated modes: the score ``∇ log p`` is nearly blind to the modes' relative weights, and a
chain rarely crosses the low-density region between them. Annealed Langevin dynamics starts
where noise has merged the modes (σ_1) and follows the ladder down, running ``T`` unadjusted
Langevin steps at each level,

    α_i = ε σ_i² / σ_L²,      x ← x + (α_i / 2) ∇ₓ log q_{σ_i}(x) + √α_i z,      z ~ N(0, I),

with ``∇ₓ log q_σ = -∇ₓ E(x; θ, σ)``, ``step_size`` = ε (the final level's step, α_L = ε; it is
a variance, the square of :mod:`~unnorm.samplers.langevin`'s ε) and ``steps_per_level`` = T.
Scaling the step with σ_i² keeps the ratio of step to noise variance, α_i / σ_i² = ε / σ_L², the
same at every level; by default ε = 0.2 σ_L², so that ratio is 0.2 on any ladder (Song & Ermon
2019 use ε = 2·10⁻⁵ with σ_L = 0.01).

How a draw relates to the chain: **one kernel step is one whole anneal**, started afresh from
``x_0 = x_init + σ_1 z`` with ``x_init`` the chain's starting point (``un.sample``'s ``init``,
default Uniform(-2, 2) per coordinate) and ``z ~ N(0, I)``. The first level targets
``q_{σ_1}``, the model convolved with noise of scale σ_1; when σ_1 is as large as the spread of
the data (which the ladder needs anyway, to merge the modes) a point near the data plus σ_1
noise is already close to a draw of ``q_{σ_1}``, so the first level's steps start near their
target rather than travelling from an arbitrary box, and the start scales with the ladder. The
start does not depend on the chain's previous draws, so a chain's draws are independent given
``x_init``: the Monte Carlo error of a proportion is the binomial one, and there is nothing to
burn in or adapt. ``num_warmup`` is therefore ignored (the warmup steps make no move; pass
``num_warmup=0``), and ``thinning`` only repeats anneals.

Like unadjusted Langevin (:mod:`unnorm.samplers.langevin`), the moves are not corrected by a
Metropolis step: the draws follow ``q_{σ_L}`` up to a discretization error that shrinks with ε.
Each step's ``acceptance_rate`` is the mean acceptance probability MALA *would* have had over the
final level's T steps, a diagnostic of that error. A move whose log-density or gradient is not
finite is rejected (the point stays) and the draw is flagged ``diverging``; an anneal that ends
at such a point is rejected as a whole (the chain keeps its previous draw).

The energy is called as ``energy(params, x, sigma)`` with ``sigma`` a traced 0-d array (the
levels run in one compiled loop): write it with ``jax.numpy`` operations of ``sigma``. Its
default level, ``energy(params, x)``, is what ``un.sample``'s checks of the starting points and
the other samplers use; the smallest level is the natural default.

Example
-------
The data are two unit-variance Gaussians far apart, with weights 0.2 and 0.8; the exact
noise-conditional energy is the mixture convolved with ``N(0, σ² I)``:

>>> import jax, jax.numpy as jnp, numpy as np
>>> import unnorm as un
>>> means, weights = jnp.array([-4.0, 4.0]), jnp.array([0.2, 0.8])
>>> def energy(params, x, sigma=0.01):
...     var = 1.0 + sigma**2
...     return -jax.nn.logsumexp(jnp.log(weights) - 0.5 * (x[0] - means) ** 2 / var)
>>> model = un.Model(energy, params={}, support=un.supports.real(1))
>>> idata = un.sample(model, key=jax.random.key(0), sampler="annealed_langevin",
...                   num_chains=200, num_warmup=0, num_samples=5, progress_bar=False,
...                   warn=False)
>>> share = float((idata.posterior["x"] > 0).mean())
>>> bool(abs(share - 0.8) < 0.05)          # binomial s.e. of 1000 draws: 0.013
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks, threefry
from . import langevin
from .spec import OPTION_CHECKS, Kernel, SamplerSpec

__all__ = ["AnnealedLangevinState", "AnnealedLangevinInfo", "geometric_sigmas", "ladder", "init",
           "anneal", "step", "ANNEALED_LANGEVIN"]

#: the geometric ladder used when ``sigmas`` is not given: from 10 (larger than the distances
#: between points of data of unit scale in a few dimensions, so the first level merges the
#: modes; Song & Ermon 2020, technique 1) down to 0.01 (Song & Ermon 2019's smallest level), in
#: 10 levels (their L), a factor of about 2.15 between levels
DEFAULT_SIGMA_MAX, DEFAULT_SIGMA_MIN, DEFAULT_NUM_LEVELS = 10.0, 0.01, 10

#: the default ε is this multiple of σ_L², so that every level's step is this fraction of its
#: noise variance, α_i / σ_i² = ε / σ_L², whatever the ladder: Song & Ermon (2019)'s ε = 2e-5
#: at σ_L = 0.01. On a Gaussian level whose variance v is mostly noise (v ≈ σ_i²) an unadjusted
#: step of α shrinks the distance to the mean by 1 - α / 2v = 0.9, so 100 steps forget where
#: they started (0.9¹⁰⁰ ≈ 3e-5), and inflates the variance by 1 / (1 - α / 4v) - 1 ≤ 5 %.
DEFAULT_STEP_RATIO = 0.2


class AnnealedLangevinState(NamedTuple):
    """A chain of anneals: where each anneal starts (before the σ_1 noise), the last draw, its
    log-density at the smallest level, and ε."""

    origin: jax.Array
    position: jax.Array
    logdensity: jax.Array
    step_size: jax.Array


class AnnealedLangevinInfo(NamedTuple):
    """What one anneal did: the mean would-be MALA acceptance of its final level's steps, whether
    any of its moves was rejected as non-finite, and the mean would-be acceptance per level."""

    acceptance_rate: jax.Array
    is_divergent: jax.Array
    level_acceptance: jax.Array


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> tuple[float, ...]:
    """The ladder ``σ_1 = sigma_max > … > σ_L = sigma_min`` with a constant ratio between
    levels, as Song & Ermon (2019) choose it.

    Examples
    --------
    >>> from unnorm.samplers.annealed_langevin import geometric_sigmas
    >>> [round(s, 6) for s in geometric_sigmas(1.0, 0.01, 3)]
    [1.0, 0.1, 0.01]
    """
    sigma_max = _checks.check_positive_float(sigma_max, "sigma_max")
    sigma_min = _checks.check_positive_float(sigma_min, "sigma_min")
    num_levels = _checks.check_int(num_levels, "num_levels", 2)
    if not sigma_max > sigma_min:
        raise ValueError(f"sigma_max must be larger than sigma_min (the ladder goes from the "
                         f"largest noise down); got sigma_max={sigma_max}, "
                         f"sigma_min={sigma_min}.")
    # geomspace, then the ends set exactly: the smallest level is then exactly sigma_min, the
    # level at which ε is the step size
    ladder = [float(s) for s in np.geomspace(sigma_max, sigma_min, num_levels)]
    ladder[0], ladder[-1] = sigma_max, sigma_min
    return tuple(ladder)


def _level_logdensity(logdensity_fn: Callable, sigma) -> Callable:
    return lambda u: logdensity_fn(u, sigma)


def init(position: jax.Array, logdensity_fn: Callable, sigma_min,
         step_size) -> AnnealedLangevinState:
    """A chain whose anneals start at ``position`` (plus σ_1 noise); its log-density is taken at
    the smallest level ``sigma_min``. ``logdensity_fn(u, sigma)`` is the noise-conditional
    log-density (:func:`unnorm.samplers.unconstrained_logdensity`)."""
    logdensity = logdensity_fn(position, jnp.asarray(sigma_min, position.dtype))
    return AnnealedLangevinState(position, position, logdensity,
                                 jnp.asarray(step_size, position.dtype))


def anneal(key, start: jax.Array, logdensity_fn: Callable, sigmas: Sequence[float],
           steps_per_level: int, step_size) -> tuple[langevin.LangevinState, AnnealedLangevinInfo]:
    """Algorithm 1 of Song & Ermon (2019) from ``start``: ``steps_per_level`` unadjusted
    Langevin steps at each level of ``sigmas`` (decreasing), of size
    ``α_i = step_size · σ_i² / σ_L²``.

    Each step is :func:`unnorm.samplers.langevin.ula_step` with ε = √α_i on the log-density
    ``logdensity_fn(·, σ_i)``, so a non-finite move is rejected there. Returns the final state
    (position, log-density and gradient at σ_L) and the anneal's
    :class:`AnnealedLangevinInfo`.
    """
    dtype = start.dtype
    levels = jnp.asarray(sigmas, dtype)
    alphas = step_size * (levels / levels[-1]) ** 2
    keys = threefry.split(key, len(sigmas))

    def one_level(position, level):
        sigma, alpha, level_key = level
        level_logdensity = _level_logdensity(logdensity_fn, sigma)
        # the state caches log q and its gradient: both are re-evaluated at the new level
        state = langevin.init(position, level_logdensity)
        epsilon = jnp.sqrt(alpha)

        def one_step(t, carry):
            state, accept_sum, divergent = carry
            state, info = langevin.ula_step(threefry.fold_in(level_key, t), state,
                                            level_logdensity, epsilon)
            return state, accept_sum + info.acceptance_rate, divergent | info.is_divergent

        state, accept_sum, divergent = jax.lax.fori_loop(
            0, steps_per_level, one_step,
            (state, jnp.zeros((), dtype), jnp.zeros((), bool)))
        return state.position, (state, accept_sum / steps_per_level, divergent)

    _, (states, acceptance, divergent) = jax.lax.scan(one_level, start, (levels, alphas, keys))
    final = jax.tree_util.tree_map(lambda leaf: leaf[-1], states)
    return final, AnnealedLangevinInfo(acceptance[-1], jnp.any(divergent), acceptance)


def step(key, state: AnnealedLangevinState, logdensity_fn: Callable, sigmas: Sequence[float],
         steps_per_level: int) -> tuple[AnnealedLangevinState, AnnealedLangevinInfo]:
    """One draw: a whole anneal from ``state.origin + σ_1 z``, independent of the chain's
    previous draws.

    The anneal is rejected as a whole (the chain keeps its previous draw, flagged divergent)
    when its end point's log-density or gradient at σ_L is not finite: a start drawn where the
    energy is not finite stays there, since every move from it is rejected."""
    start_key, anneal_key = threefry.split(key)
    origin = state.origin
    start = origin + sigmas[0] * threefry.normal(start_key, origin.shape, origin.dtype)
    final, info = anneal(anneal_key, start, logdensity_fn, sigmas, steps_per_level,
                         state.step_size)
    ok = jnp.isfinite(final.logdensity) & jnp.all(jnp.isfinite(final.logdensity_grad))
    new = state._replace(position=jnp.where(ok, final.position, state.position),
                         logdensity=jnp.where(ok, final.logdensity, state.logdensity))
    return new, info._replace(is_divergent=info.is_divergent | ~ok)


# ---- the spec -----------------------------------------------------------------------------------

def _check_sigmas(value, name: str) -> tuple[float, ...]:
    """A non-empty 1-D sequence of finite positive numbers, strictly decreasing."""
    if isinstance(value, (str, bytes)) or np.ndim(value) != 1:
        raise TypeError(f"{name} must be a 1-D sequence of noise levels, largest first (such as "
                        f"(1.0, 0.1, 0.01)); got {value!r}.")
    if len(value) == 0:
        raise ValueError(f"{name} must hold at least one noise level; got an empty sequence.")
    levels = tuple(_checks.check_positive_float(s, f"{name}[{i}]") for i, s in enumerate(value))
    if any(a <= b for a, b in zip(levels[:-1], levels[1:], strict=True)):
        raise ValueError(
            f"{name} must be strictly decreasing, σ_1 > … > σ_L (the anneal goes from the "
            f"largest noise down); got {levels}. Pass sorted(set({name}), reverse=True).")
    return levels


def _refuse_target_accept(value, name: str):
    raise ValueError(f"{name} does not apply to sampler 'annealed_langevin': its step size ε is "
                     "not adapted (give step_size itself).")


_LADDER_OPTIONS = ("sigma_max", "sigma_min", "num_levels")

_DEFAULTS = {"sigmas": None, "sigma_max": None, "sigma_min": None, "num_levels": None,
             "steps_per_level": 100, "step_size": None, "chain_block": None}

_CHECKS = {
    "sigmas": _check_sigmas,
    "sigma_max": _checks.check_positive_float,
    "sigma_min": _checks.check_positive_float,
    "num_levels": lambda v, k: _checks.check_int(v, k, 2),
    "steps_per_level": lambda v, k: _checks.check_int(v, k, 1),
    "step_size": _checks.check_positive_float,
    "chain_block": OPTION_CHECKS["chain_block"],
    # un.sample passes target_accept through the spec's checks: a clear refusal, not a KeyError
    "target_accept": _refuse_target_accept,
}


def ladder(tuning: dict) -> tuple[float, ...]:
    """The noise levels of checked ``tuning`` (the sampler's options): ``sigmas`` if given, else
    the geometric ladder of ``sigma_max``, ``sigma_min`` and ``num_levels`` (defaults 10, 0.01
    and 10); giving both is an error."""
    given = [name for name in _LADDER_OPTIONS if tuning.get(name) is not None]
    if tuning.get("sigmas") is not None:
        if given:
            raise ValueError(f"sampler 'annealed_langevin': give either sigmas or "
                             f"sigma_max/sigma_min/num_levels, not both; got sigmas and {given}.")
        return tuple(tuning["sigmas"])
    return geometric_sigmas(
        DEFAULT_SIGMA_MAX if tuning.get("sigma_max") is None else tuning["sigma_max"],
        DEFAULT_SIGMA_MIN if tuning.get("sigma_min") is None else tuning["sigma_min"],
        DEFAULT_NUM_LEVELS if tuning.get("num_levels") is None else tuning["num_levels"])


def _not_noise_conditional(what: str) -> ValueError:
    return ValueError(
        "sampler 'annealed_langevin' needs a noise-conditional energy, one whose function takes "
        "the noise level as a keyword, energy(params, x, sigma=...), and models the data "
        "convolved with N(0, sigma² I) (train it with un.estimators.DSM(sigma=[...])); "
        f"{what} takes no 'sigma'. Use sampler='mala' or 'nuts' for it.")


def _check(model) -> None:
    """A noise-conditional energy on a real support (run for un.sample and the chain
    estimators alike, before anything compiles)."""
    if not model.noise_conditional:
        raise _not_noise_conditional(f"the energy of model {model.name!r}")
    if model.support.kind != "real":
        raise ValueError(
            f"sampler 'annealed_langevin' needs a real support: its noise levels are Gaussian "
            f"noise in x, which leaves the model's support {model.support!r}.")


def _prepare(model, params, tuning: dict) -> dict:
    """The ladder, resolved before building, so a bad combination of options is reported before
    anything compiles."""
    return {**tuning, "sigmas": ladder(tuning), **dict.fromkeys(_LADDER_OPTIONS)}


def _kernel(tuning: dict, num_warmup: int, values) -> Kernel:
    sigmas = ladder(tuning)
    steps_per_level = int(tuning["steps_per_level"])
    sigma_min = sigmas[-1]
    step_size = (DEFAULT_STEP_RATIO * sigma_min**2 if tuning.get("step_size") is None
                 else float(tuning["step_size"]))

    def kernel_init(position, logdensity_fn, key):
        return init(position, logdensity_fn, sigma_min, step_size)

    def kernel_step(key, state, logdensity_fn, warmup=False):
        def skip(key, state):
            # a draw does not depend on the chain's past: warmup has nothing to burn in or adapt
            nan = jnp.full((), jnp.nan, state.position.dtype)
            return state, AnnealedLangevinInfo(nan, jnp.zeros((), bool),
                                               jnp.full((len(sigmas),), jnp.nan, nan.dtype))

        def move(key, state):
            return step(key, state, logdensity_fn, sigmas, steps_per_level)

        return jax.lax.cond(warmup, skip, move, key, state)

    def stats(state, info):
        return {
            "acceptance_rate": info.acceptance_rate,
            "diverging": info.is_divergent,
            "step_size": state.step_size,
        }

    def refresh(state, logdensity_fn, position=None):
        position = state.position if position is None else position
        return state._replace(position=position, logdensity=logdensity_fn(
            position, jnp.asarray(sigma_min, position.dtype)))

    return Kernel(
        "annealed_langevin", False, True, kernel_init, kernel_step, lambda state: state,
        position=lambda state: state.position,
        logdensity=lambda state: state.logdensity,
        stats=stats,
        refresh=refresh,
        get_step_size=lambda state: state.step_size,
        set_step_size=lambda state, value: state._replace(step_size=value),
        chain_block=tuning.get("chain_block"),
    )


_ADVICE = ("The noise-conditional energy (or its gradient) was not finite at the rejected moves: "
           "check it at every level of sigmas (a log of sigma, a division by it), or lower "
           "step_size.")

#: ``sampler="annealed_langevin"``: annealed Langevin dynamics for noise-conditional energies
ANNEALED_LANGEVIN = SamplerSpec(
    name="annealed_langevin",
    description="annealed Langevin dynamics (noise-conditional energies)",
    discrete=False, uses_gradient=True, defaults=_DEFAULTS, checks=_CHECKS, build=_kernel,
    has_step_size=True, thinning=1, divergence_advice=_ADVICE, prepare=_prepare,
    check=_check)
