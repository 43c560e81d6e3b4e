"""The sampler registry: name → the :class:`~unnorm.samplers.spec.SamplerSpec` its module exports.

Adding a sampler is one module that exports a spec, and one line in :data:`SAMPLERS`. Every rule
that depends on the sampler (does it fit the support, does it take a step size, how much to
thin, what to say about divergences) reads a field of the spec.
"""

from __future__ import annotations

import functools

from . import annealed_langevin, gibbs, hmc, langevin, rwmh, tempering
from .spec import Kernel, SamplerSpec

__all__ = ["SAMPLERS", "SamplerSpec", "build_kernel", "build_sampler", "check_sampler",
           "check_step_options", "check_tuning", "sampler_names"]

#: name -> spec, one line per sampler
SAMPLERS: dict[str, SamplerSpec] = {spec.name: spec for spec in (
    hmc.NUTS,
    hmc.HMC,
    langevin.MALA,
    langevin.ULA,
    annealed_langevin.ANNEALED_LANGEVIN,
    rwmh.RWMH,
    gibbs.GIBBS,
    tempering.TEMPERING,
)}


def sampler_names(discrete: bool | None = None) -> list[str]:
    """The valid sampler names; with ``discrete``, those that work on discrete (True) or
    continuous (False) supports."""
    return [name for name, spec in SAMPLERS.items()
            if discrete is None or spec.discrete in (None, discrete)]


def _alternatives(names: list[str]) -> str:
    return " or ".join(repr(name) for name in names)


def check_sampler(sampler, model, where: str = "") -> SamplerSpec:
    """The spec of ``sampler`` after checking that it exists and can sample ``model`` (its
    support's kind, and the spec's own ``check``); ``where`` names the caller in the messages
    (e.g. ``"estimator 'pcd': "``)."""
    support = model.support
    spec = SAMPLERS.get(sampler) if isinstance(sampler, str) else None
    if spec is None:
        raise ValueError(f"{where}unknown sampler {sampler!r}; choose one of "
                         f"{', '.join(map(repr, SAMPLERS))}.")
    if spec.discrete is not None and spec.discrete != support.is_discrete:
        valid = _alternatives(sampler_names(support.is_discrete))
        if support.is_discrete:
            raise ValueError(
                f"{where}sampler {sampler!r} does not apply to the model's support {support!r}: "
                f"it needs a continuous support; use sampler={valid} for binary and spin models.")
        raise ValueError(
            f"{where}sampler {sampler!r} does not apply to the model's support {support!r}: "
            f"{sampler!r} works on binary and spin supports only; use {valid}.")
    if spec.check is not None:
        spec.check(model)
    return spec


def check_step_options(spec: SamplerSpec, **options) -> dict:
    """``step_size`` / ``target_accept`` given as arguments: checked, for samplers that have a
    step size (a clear error for the others); None values are left out."""
    given = {k: v for k, v in options.items() if v is not None}
    if given and not spec.has_step_size:
        name = next(iter(given))
        raise ValueError(f"{name} does not apply to sampler {spec.name!r} (it has no step "
                         "size).")
    return {k: spec.checks[k](v, k) for k, v in given.items()}


def check_tuning(spec: SamplerSpec, tuning: dict) -> dict:
    """The checked options merged over the spec's defaults (plain Python values)."""
    unknown = sorted(set(tuning) - set(spec.defaults))
    if unknown:
        raise TypeError(
            f"sampler {spec.name!r} does not take option(s) {unknown}; it accepts "
            f"{sorted(spec.defaults)}."
        )
    checked = {k: spec.checks[k](v, k) for k, v in tuning.items() if v is not None}
    return {**spec.defaults, **checked}


@functools.lru_cache(maxsize=256)
def _build(spec: SamplerSpec, num_warmup: int, values, tuning_items: tuple) -> Kernel:
    return spec.build(dict(tuning_items), num_warmup, values)


def build_kernel(spec: SamplerSpec, num_warmup: int, values, tuning: dict) -> Kernel:
    """Build (and cache) the kernel of ``spec`` from options already checked (and prepared)."""
    items = tuple(sorted(tuning.items(), key=lambda item: item[0]))
    return _build(spec, int(num_warmup), values, items)


def build_sampler(name: str, num_warmup: int, values=None, **tuning) -> Kernel:
    """Build (and cache) the :class:`~unnorm.samplers.spec.Kernel` of sampler ``name``.

    Unknown tuning options raise ``TypeError`` listing the accepted ones. The kernel is cached
    on its arguments, so repeated calls reuse compiled code. Options that depend on a model
    (Gibbs' blocked scan) are resolved by the spec's ``prepare``, which :func:`unnorm.sample`
    runs; here Gibbs' ``scan="auto"`` means the sequential scan.

    Example
    -------
    >>> kernel = build_sampler("mala", num_warmup=100, step_size=0.2)
    >>> kernel.name, kernel.uses_gradient
    ('mala', True)
    """
    spec = SAMPLERS[name]
    return build_kernel(spec, num_warmup, values, check_tuning(spec, tuning))
