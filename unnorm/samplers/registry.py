"""The sampler registry: a name -> how to build, warm up and run its kernel.

Every sampler is described by a :class:`SamplerSpec` of pure functions over NamedTuple states;
:func:`unnorm.sample` drives any of them the same way (vmap over chains, ``lax.scan`` over steps).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .. import _checks
from . import gibbs, hmc, langevin, rwmh
from .adaptation import step_size_adaptation

__all__ = ["SamplerSpec", "SAMPLERS", "build_sampler", "sampler_names"]


class SamplerSpec(NamedTuple):
    """How :func:`unnorm.sample` runs one kind of sampler.

    ``init(position, logdensity_fn, key)``; ``step(key, state, logdensity_fn, warmup)
    -> (state, info)`` where ``warmup`` (a bool, possibly traced) switches adaptation on, so one
    compiled step serves both phases; ``finalize(state)`` at the end of warmup;
    ``position(state)``, ``logdensity(state)`` and ``stats(state, info) -> dict`` of per-draw
    sample statistics named as ArviZ names them; ``refresh(state, logdensity_fn)`` re-evaluates
    the log-density (and gradient) a state caches, keeping its position and adaptation, for a
    chain whose target has changed (θ moved in a training loop: CD, PCD, MLE).
    """

    name: str
    discrete: bool
    uses_gradient: bool
    init: Callable
    step: Callable
    finalize: Callable
    position: Callable
    logdensity: Callable
    stats: Callable
    refresh: Callable


class _Entry(NamedTuple):
    discrete: bool
    uses_gradient: bool
    description: str
    tuning: dict[str, Any]


#: name -> (discrete?, gradient?, description, tuning options with their defaults)
SAMPLERS: dict[str, _Entry] = {
    "nuts": _Entry(False, True, "No-U-Turn sampler (NumPyro)",
                   {"step_size": 1.0, "target_accept": 0.8, "max_tree_depth": 10,
                    "dense_mass": False, "adapt_mass_matrix": True, "adapt_step_size": True}),
    "hmc": _Entry(False, True, "Hamiltonian Monte Carlo, static path length (NumPyro)",
                  {"step_size": 1.0, "target_accept": 0.8, "num_steps": None,
                   "trajectory_length": float(jnp.pi), "jitter": 0.5, "dense_mass": False,
                   "adapt_mass_matrix": True, "adapt_step_size": True}),
    "mala": _Entry(False, True, "Metropolis-adjusted Langevin",
                   {"step_size": 0.1, "target_accept": 0.574, "adapt_step_size": True}),
    "langevin": _Entry(False, True, "unadjusted Langevin (ULA)",
                       {"step_size": 0.1, "target_accept": 0.99, "adapt_step_size": True}),
    "rwmh": _Entry(False, False, "random-walk Metropolis-Hastings",
                   {"step_size": 0.5, "target_accept": 0.234, "adapt_step_size": True}),
    "gibbs": _Entry(True, False, "Gibbs, sequential or blocked scan (binary / spin supports)",
                    {"unroll": 1, "scan": "auto"}),
}


def sampler_names() -> list[str]:
    """The valid sampler names."""
    return list(SAMPLERS)


def _adaptive_spec(name: str, kernel_init, kernel_step, tuning: dict) -> SamplerSpec:
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

    def refresh(state, logdensity_fn):
        return state._replace(kernel=kernel_init(state.kernel.position, logdensity_fn))

    return SamplerSpec(
        name, False, SAMPLERS[name].uses_gradient, init, step, finalize,
        position=lambda state: state.kernel.position,
        logdensity=lambda state: state.kernel.logdensity,
        stats=stats,
        refresh=refresh,
    )


def _hmc_spec(name: str, num_warmup: int, tuning: dict) -> SamplerSpec:
    options = {k: v for k, v in tuning.items() if k in ("step_size", "target_accept",
                                                        "dense_mass", "adapt_mass_matrix",
                                                        "adapt_step_size")}
    if name == "nuts":
        options["max_tree_depth"] = tuning["max_tree_depth"]
    else:
        options["num_steps"] = tuning["num_steps"]
        options["trajectory_length"] = tuning["trajectory_length"]
        options["jitter"] = tuning["jitter"]
    kernel = hmc.build(name, **options)

    def init(position, logdensity_fn, key):
        return kernel.init(position, logdensity_fn, num_warmup, key)

    def step(key, state, logdensity_fn, warmup):
        # NumPyro adapts inside the kernel during its first num_warmup steps.
        return kernel.step(key, state, logdensity_fn)

    def stats(state, info):
        out = {
            "acceptance_rate": info.acceptance_rate,
            "diverging": info.is_divergent,
            "step_size": info.step_size,
            "n_steps": info.num_steps,
            "energy": info.energy,
        }
        if name == "nuts":
            # A tree of depth j holds 2**(j-1) .. 2**j - 1 leapfrog steps.
            out["tree_depth"] = jnp.floor(jnp.log2(jnp.maximum(info.num_steps, 1))).astype(
                jnp.int32
            ) + 1
        return out

    def refresh(state, logdensity_fn):
        logdensity, grad = jax.value_and_grad(logdensity_fn)(state.z)
        return state._replace(potential_energy=-logdensity, z_grad=-grad)

    return SamplerSpec(
        name, False, True, init, step, lambda state: state,
        position=lambda state: state.z,
        logdensity=lambda state: -state.potential_energy,
        stats=stats,
        refresh=refresh,
    )


def _gibbs_spec(values: tuple[float, float], tuning: dict, blocks) -> SamplerSpec:
    def step(key, state, logdensity_fn, warmup):
        if blocks is not None:
            return gibbs.blocked_step(key, state, logdensity_fn, blocks.colors, values=values,
                                      multilinear=blocks.multilinear, unroll=tuning["unroll"])
        return gibbs.step(key, state, logdensity_fn, values=values, unroll=tuning["unroll"])

    def stats(state, info):
        return {
            "acceptance_rate": info.acceptance_rate,
            "flip_rate": info.flip_rate,
            "diverging": info.is_divergent,
        }

    return SamplerSpec(
        "gibbs", True, False, lambda position, logdensity_fn, key: gibbs.init(position,
                                                                              logdensity_fn),
        step, lambda state: state,
        position=lambda state: state.position,
        logdensity=lambda state: state.logdensity,
        stats=stats,
        refresh=lambda state, logdensity_fn: gibbs.init(state.position, logdensity_fn),
    )


@functools.lru_cache(maxsize=256)
def _build(name: str, num_warmup: int, values, tuning_items: tuple, blocks) -> SamplerSpec:
    tuning = dict(tuning_items)
    if name in ("nuts", "hmc"):
        return _hmc_spec(name, num_warmup, tuning)
    if name == "mala":
        return _adaptive_spec(name, langevin.init, langevin.mala_step, tuning)
    if name == "langevin":
        return _adaptive_spec(name, langevin.init, langevin.ula_step, tuning)
    if name == "rwmh":
        return _adaptive_spec(name, rwmh.init, rwmh.step, tuning)
    return _gibbs_spec(values, tuning, blocks)


def build_sampler(name: str, num_warmup: int, values=None, blocks=None, **tuning) -> SamplerSpec:
    """Build (and cache) the :class:`SamplerSpec` of sampler ``name`` with tuning options.

    ``blocks`` (gibbs only): a :class:`~unnorm.samplers.structure.GibbsBlocks` colouring for
    the blocked scan, or None for the sequential one. Unknown tuning options raise
    ``TypeError`` listing the accepted ones. The spec is cached on its arguments so repeated
    :func:`unnorm.sample` calls reuse compiled code.
    """
    entry = SAMPLERS[name]
    unknown = sorted(set(tuning) - set(entry.tuning))
    if unknown:
        raise TypeError(
            f"sampler {name!r} does not take option(s) {unknown}; it accepts "
            f"{sorted(entry.tuning)}."
        )
    checked = {k: _OPTION_CHECKS[k](v, k) for k, v in tuning.items() if v is not None}
    merged = {**entry.tuning, **checked}
    return _build(name, int(num_warmup), values, tuple(sorted(merged.items())), blocks)


def _check_unroll(value, name: str) -> int | bool:
    return value if isinstance(value, bool) else _checks.check_int(value, name, 1)


#: Each tuning option's check: plain Python values out (hashable, so specs can be cached).
_OPTION_CHECKS: dict[str, Callable] = {
    "step_size": _checks.check_positive_float,
    "target_accept": _checks.check_probability,
    "max_tree_depth": lambda v, k: _checks.check_int(v, k, 1),
    "num_steps": lambda v, k: _checks.check_int(v, k, 1),
    "trajectory_length": _checks.check_positive_float,
    "jitter": _checks.check_fraction,
    "dense_mass": _checks.check_bool,
    "adapt_mass_matrix": _checks.check_bool,
    "adapt_step_size": _checks.check_bool,
    "unroll": _check_unroll,
    "scan": lambda v, k: _checks.check_choice(v, k, ["auto", "sequential", "blocked"]),
}
