"""Samplers: kernels in the BlackJAX shape and the :func:`sample` driver.

Each kernel module exposes ``init(position, logdensity_fn)`` and
``step(key, state, logdensity_fn, ...) -> (state, info)`` over NamedTuple states, so estimators
can run them inside a training loop while θ changes.

A state caches the log-density (and, for gradient kernels, its gradient) at its position. When θ
changes between steps, rebuild it with ``init(state.position, new_logdensity_fn)`` before the next
step, so that the Metropolis–Hastings ratio compares both points under the same θ (persistent
chains in contrastive divergence do this).
"""

from . import adaptation, gibbs, hmc, langevin, rwmh
from .registry import SAMPLERS, build_sampler, check_sampler, sampler_names
from .run import sample
from .spec import Kernel, SamplerSpec
from .target import to_position, unconstrained_logdensity

__all__ = [
    "adaptation",
    "gibbs",
    "hmc",
    "langevin",
    "rwmh",
    "Kernel",
    "SAMPLERS",
    "SamplerSpec",
    "check_sampler",
    "build_sampler",
    "sampler_names",
    "sample",
    "to_position",
    "unconstrained_logdensity",
]
