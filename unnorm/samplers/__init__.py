"""Samplers: kernels in the BlackJAX shape and the :func:`sample` driver.

Each kernel module exposes ``init(position, logdensity_fn)`` and
``step(key, state, logdensity_fn, ...) -> (state, info)`` over NamedTuple states, so estimators
can run them inside a training loop while θ changes.
"""

from . import adaptation, gibbs, hmc, langevin, rwmh
from .registry import SAMPLERS, SamplerSpec, build_sampler, sampler_names
from .run import sample, unconstrained_logdensity

__all__ = [
    "adaptation",
    "gibbs",
    "hmc",
    "langevin",
    "rwmh",
    "SAMPLERS",
    "SamplerSpec",
    "build_sampler",
    "sampler_names",
    "sample",
    "unconstrained_logdensity",
]
