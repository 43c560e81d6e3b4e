"""NUTS and HMC through NumPyro's functional kernels, in the BlackJAX shape.

No Hamiltonian dynamics are written here: ``numpyro.infer.hmc.hmc(potential_fn_gen=..., algo=...)``
builds the kernels, with the log-density passed as the model argument of every call, so the same
compiled step serves a training loop whose parameters change (Song & Kingma 2021, §2.1: MLE with
HMC). Warmup adaptation (dual-averaging step size and a windowed diagonal or dense mass matrix) is
NumPyro's too: it runs inside the first ``num_warmup`` steps after :func:`init`.

Example
-------
>>> import jax, jax.numpy as jnp
>>> from unnorm.samplers import hmc
>>> logdensity = lambda x: -0.5 * jnp.sum(x**2)
>>> kernel = hmc.build("nuts")
>>> state = kernel.init(jnp.zeros(2), logdensity, num_warmup=10, key=jax.random.key(0))
>>> state, info = kernel.step(jax.random.key(1), state, logdensity)
>>> int(info.num_steps) >= 1
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from numpyro.infer.hmc import hmc as numpyro_hmc

from .. import threefry
from . import chain_blocks
from .spec import Kernel, SamplerSpec, StepCap, option_checks

__all__ = ["HMCKernel", "HMCInfo", "build", "NUTS", "HMC", "MAX_NUM_STEPS"]

#: HMC's default bound on the leapfrog steps of one draw: NUTS's default 2**max_tree_depth
MAX_NUM_STEPS = 1024


class HMCInfo(NamedTuple):
    acceptance_rate: jax.Array
    is_divergent: jax.Array
    step_size: jax.Array
    num_steps: jax.Array
    energy: jax.Array


class HMCKernel(NamedTuple):
    """``init(position, logdensity_fn, num_warmup, key)`` and
    ``step(key, state, logdensity_fn) -> (state, HMCInfo)``; the state is NumPyro's HMCState."""

    init: Callable
    step: Callable


def _potential_fn_gen(logdensity_fn: Callable) -> Callable:
    return lambda position: -logdensity_fn(position)


def build(
    algo: str = "nuts",
    step_size: float = 1.0,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    num_steps: int | None = None,
    trajectory_length: float = jnp.pi,
    jitter: float = 0.5,
    adapt_step_size: bool = True,
    adapt_mass_matrix: bool = True,
    dense_mass: bool = False,
    max_num_steps: int = MAX_NUM_STEPS,
) -> HMCKernel:
    """Build a NUTS (``algo="nuts"``) or static HMC (``algo="hmc"``) kernel.

    Parameters
    ----------
    step_size : float
        Initial leapfrog step size (adapted during warmup unless ``adapt_step_size=False``).
    target_accept : float
        Dual averaging's target acceptance probability.
    max_tree_depth : int
        NUTS only: at most ``2**max_tree_depth - 1`` leapfrog steps per draw.
    num_steps, trajectory_length
        HMC only: a fixed number of leapfrog steps, else ``trajectory_length / step_size``.
    jitter : float
        HMC only, without ``num_steps``: each draw's path length is ``trajectory_length`` times
        Uniform(1 - jitter, 1 + jitter) (Neal 2011, §5.4.2.2). A fixed length can resonate with
        the target: on a Gaussian whose scale the mass matrix has learnt, NumPyro's default
        length 2π is one full period and the chain barely moves. The default π ± 50% makes
        successive Gaussian draws negatively correlated on average.
    adapt_mass_matrix, dense_mass
        Windowed adaptation of a diagonal (or dense) inverse mass matrix during warmup.
    max_num_steps : int
        HMC only, without ``num_steps``: at most this many leapfrog steps per draw (default
        1024, NUTS's ``2**10``). NumPyro takes ``ceil(trajectory_length / step_size)`` steps,
        without a bound: where the step size adapts towards zero (an improper density, whose
        chains run off to infinity) a single draw took millions of steps and the run seemed
        to hang. Past the cap the path is shortened to ``max_num_steps`` steps of the adapted
        size; :func:`unnorm.sample` warns when many draws reach it.
    """
    if algo not in ("nuts", "hmc"):
        raise ValueError(f"algo must be 'nuts' or 'hmc'; got {algo!r}.")
    init_kernel, sample_kernel = numpyro_hmc(
        potential_fn_gen=_potential_fn_gen, algo=algo.upper()
    )

    def init(position: jax.Array, logdensity_fn: Callable, num_warmup: int, key) -> Any:
        return init_kernel(
            position,
            num_warmup,
            step_size=step_size,
            adapt_step_size=adapt_step_size,
            adapt_mass_matrix=adapt_mass_matrix,
            dense_mass=dense_mass,
            target_accept_prob=target_accept,
            num_steps=num_steps,
            # NumPyro rescales the step to trajectory_length / num_steps whenever a length is
            # given, so a fixed number of steps must come without one.
            trajectory_length=None if num_steps is not None else trajectory_length,
            max_tree_depth=max_tree_depth,
            model_args=(logdensity_fn,),
            rng_key=key,
        )

    by_length = algo == "hmc" and num_steps is None
    jittered = by_length and jitter > 0

    def step(key, state, logdensity_fn: Callable):
        if by_length:
            length = jnp.asarray(trajectory_length, dtype=state.adapt_state.step_size.dtype)
            if jittered:
                key, key_length = threefry.split(key)
                length = length * threefry.uniform(
                    key_length, (), jnp.result_type(float), minval=1.0 - jitter,
                    maxval=1.0 + jitter)
            # NumPyro takes ceil(length / step_size) steps: a length of (cap - ½) steps of the
            # adapted size gives exactly cap steps, whatever the rounding of the division
            cap = (max_num_steps - 0.5) * state.adapt_state.step_size
            state = state._replace(trajectory_length=jnp.minimum(length, cap))
        state = sample_kernel(state._replace(rng_key=key), model_args=(logdensity_fn,))
        info = HMCInfo(
            acceptance_rate=state.accept_prob,
            is_divergent=state.diverging,
            step_size=state.adapt_state.step_size,
            num_steps=state.num_steps,
            energy=state.energy,
        )
        return state, info

    return HMCKernel(init, step)


def _kernel(name: str, tuning: dict, num_warmup: int) -> Kernel:
    """The chain runner's :class:`~unnorm.samplers.spec.Kernel` of NUTS or HMC."""
    kernel = build(name, **tuning)

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

    def refresh(state, logdensity_fn, position=None):
        z = state.z if position is None else position
        logdensity, grad = jax.value_and_grad(logdensity_fn)(z)
        return state._replace(z=z, potential_energy=-logdensity, z_grad=-grad)

    return Kernel(
        name, False, True, init, step, lambda state: state,
        position=lambda state: state.z,
        logdensity=lambda state: -state.potential_energy,
        stats=stats,
        refresh=refresh,
        get_step_size=lambda state: state.adapt_state.step_size,
        set_step_size=lambda state, value: state._replace(
            adapt_state=state.adapt_state._replace(step_size=value)),
        chain_block=chain_blocks.TRAJECTORY_BLOCK,
    )


_ADVICE = "Increase target_accept or reparameterize."
_NUTS_DEFAULTS = {"step_size": 1.0, "target_accept": 0.8, "max_tree_depth": 10,
                  "dense_mass": False, "adapt_mass_matrix": True, "adapt_step_size": True}


def _nuts_cap(tuning) -> StepCap:
    # a tree of the maximum depth d holds 2**(d-1) .. 2**d - 1 steps (Stan's "hit max treedepth")
    depth = tuning["max_tree_depth"]
    return StepCap(2 ** (depth - 1), f"reached the maximum tree depth (max_tree_depth={depth}, "
                                     f"up to {2**depth - 1} leapfrog steps per draw)")


#: ``sampler="nuts"``: the No-U-Turn sampler (NumPyro)
NUTS = SamplerSpec(
    name="nuts", description="No-U-Turn sampler (NumPyro)", discrete=False, uses_gradient=True,
    defaults=_NUTS_DEFAULTS, checks=option_checks(_NUTS_DEFAULTS),
    build=lambda tuning, num_warmup, values: _kernel("nuts", tuning, num_warmup),
    divergence_advice=_ADVICE, step_cap=_nuts_cap)

_HMC_DEFAULTS = {"step_size": 1.0, "target_accept": 0.8, "num_steps": None,
                 "trajectory_length": float(jnp.pi), "jitter": 0.5, "dense_mass": False,
                 "adapt_mass_matrix": True, "adapt_step_size": True,
                 "max_num_steps": MAX_NUM_STEPS}


def _hmc_cap(tuning) -> StepCap | None:
    if tuning["num_steps"] is not None:
        return None  # the user's fixed number of steps: no cap to reach
    cap = tuning["max_num_steps"]
    return StepCap(cap, f"hit the cap of {cap} leapfrog steps per draw (max_num_steps={cap})")


#: ``sampler="hmc"``: Hamiltonian Monte Carlo with a static (jittered) path length (NumPyro)
HMC = SamplerSpec(
    name="hmc", description="Hamiltonian Monte Carlo, static path length (NumPyro)",
    discrete=False, uses_gradient=True, defaults=_HMC_DEFAULTS,
    checks=option_checks(_HMC_DEFAULTS),
    build=lambda tuning, num_warmup, values: _kernel("hmc", tuning, num_warmup),
    divergence_advice=_ADVICE, step_cap=_hmc_cap)
