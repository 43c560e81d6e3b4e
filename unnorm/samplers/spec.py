"""The sampler contract: the record each kernel module exports, and the kernel it builds.

A sampler is declared once, by its own module, as a :class:`SamplerSpec` record (BlackJAX's
"the module is the registry entry"): its name, whether it works on discrete or continuous
supports, whether it needs gradients, its tuning options with their defaults and checks, how to
build its :class:`Kernel`, whether it has a step size, how many steps to take per kept draw when
a fitted model is sampled, and what to tell a user about divergences. Everything that used to be
decided by testing a sampler's name is a lookup of one of these fields.

The built :class:`Kernel` is what the chain runner (:mod:`unnorm.samplers.chains`) calls:
pure functions over NamedTuple states, with the log-density an argument of every step, so the
same compiled step serves a training loop whose θ changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .. import _checks

__all__ = ["Kernel", "SamplerSpec", "StepCap", "OPTION_CHECKS", "option_checks"]


class Kernel(NamedTuple):
    """A sampler built with its options.

    ``init(position, logdensity_fn, key)``; ``step(key, state, logdensity_fn, warmup)
    -> (state, info)`` where ``warmup`` (a bool, possibly traced) switches adaptation on, so one
    compiled step serves both phases; ``finalize(state)`` at the end of warmup;
    ``position(state)``, ``logdensity(state)`` and ``stats(state, info) -> dict`` of per-draw
    sample statistics named as ArviZ names them; ``refresh(state, logdensity_fn, position=None)``
    re-evaluates the log-density (and gradient) a state caches, keeping its adaptation, at
    ``position`` (default: the state's own), for a chain whose target has changed (θ moved in a
    training loop: CD, PCD, MLE) or that is handed another point (parallel tempering's swaps).
    ``get_step_size(state)`` and ``set_step_size(state, value)`` read and write the step size of
    a sampler that has one (None otherwise). ``compiler_options``: XLA options (name, value)
    pairs for the CPU compilation of ``un.sample``'s chunks of this kernel, used only where the
    installed jaxlib accepts them. ``chain_block``: the width of the blocks of chains
    ``un.sample`` computes this kernel's steps in on the CPU, so that a chain's draws do not
    depend on how many chains run beside it (:mod:`unnorm.samplers.chain_blocks`); None: every
    group of chains is one vectorized computation.
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
    get_step_size: Callable | None = None
    set_step_size: Callable | None = None
    compiler_options: tuple = ()
    chain_block: int | None = None


class StepCap(NamedTuple):
    """The bound on one draw's integration steps that a sampler's options set: a draw with
    ``n_steps >= min_steps`` reached it, and ``what`` says so in a warning ("reached the
    maximum tree depth (max_tree_depth=10, ...)")."""

    min_steps: int
    what: str


#: the default advice of a divergence: a local sampler rejects non-finite proposals
LOCAL_DIVERGENCE_ADVICE = ("The energy (or its gradient) was not finite at the rejected proposals: "
                           "check its domain, or declare a support that matches it.")


@dataclasses.dataclass(frozen=True, eq=False)
class SamplerSpec:
    """One sampler, as its kernel module declares it (hashed by identity: built kernels are
    cached per spec).

    Attributes
    ----------
    name : str
        The name of ``un.sample(..., sampler=name)``.
    description : str
        One line for tables and error messages.
    discrete : bool or None
        True for binary and spin supports, False for continuous ones, None for both (a
        sampler built over a base kernel, such as parallel tempering).
    uses_gradient : bool
        The kernel evaluates ``∇ log p`` (the starting points' gradients are checked).
    defaults : mapping
        Every tuning option the sampler takes, with its default value.
    checks : mapping
        Option name → ``check(value, name)`` returning the plain Python value (hashable, so
        built kernels are cached) or raising a ``ValueError``/``TypeError`` naming the option;
        :func:`option_checks` picks the common ones.
    build : callable
        ``build(tuning, num_warmup, values) -> Kernel``, with ``tuning`` the checked options
        merged over the defaults (plus what ``prepare`` added) and ``values`` the discrete
        support's two values (None on continuous supports).
    has_step_size : bool
        The sampler takes ``step_size`` and ``target_accept`` (the kernel's
        ``get_step_size``/``set_step_size`` then work).
    thinning : int
        Steps per kept draw when a fitted model is sampled for its standard errors: local
        samplers move less per step than NUTS.
    divergence_advice : str
        What a user should do about divergences of this sampler.
    prepare : callable, optional
        ``prepare(model, params, tuning) -> tuning``: options that depend on the model, resolved
        in plain Python before building (Gibbs' scan order and colouring).
    check : callable, optional
        ``check(model)`` raises a ``ValueError`` when the sampler cannot sample this model
        beyond its support's kind (annealed Langevin needs a noise-conditional energy); run by
        :func:`unnorm.samplers.check_sampler` for ``un.sample`` and the chain estimators alike.
    step_cap : callable, optional
        ``step_cap(tuning) -> StepCap | None``: the bound on the integration steps of one draw
        (NUTS's tree depth, HMC's ``max_num_steps``), read against the ``n_steps`` statistic
        after sampling; draws that keep reaching it mean an improper or too stiff target.
    """

    name: str
    description: str
    discrete: bool | None
    uses_gradient: bool
    defaults: Mapping[str, Any]
    checks: Mapping[str, Callable]
    build: Callable
    has_step_size: bool = True
    thinning: int = 1
    divergence_advice: str = LOCAL_DIVERGENCE_ADVICE
    prepare: Callable | None = None
    check: Callable | None = None
    step_cap: Callable | None = None


def _check_unroll(value, name: str) -> int | bool:
    return value if isinstance(value, bool) else _checks.check_int(value, name, 1)


def _check_chain_block(value, name: str) -> int:
    """A block width: a positive integer (None, the unblocked default, never reaches a check).
    Every wrong value is a ``ValueError``, a bool included: ``True`` is not a width of one."""
    width = _checks._scalar(value, int)  # None for a bool, a float, a string, an array
    if width is not None and width >= 1:
        return width
    raise ValueError(f"{name} must be None (each group of chains one vectorized computation) "
                     f"or a positive integer, the width of the blocks the chains run in; got "
                     f"{value!r}.")


#: Each tuning option's check: plain Python values out (hashable, so kernels can be cached).
OPTION_CHECKS: dict[str, Callable] = {
    "step_size": _checks.check_positive_float,
    "target_accept": _checks.check_probability,
    "max_tree_depth": lambda v, k: _checks.check_int(v, k, 1),
    "num_steps": lambda v, k: _checks.check_int(v, k, 1),
    "max_num_steps": lambda v, k: _checks.check_int(v, k, 1),
    "trajectory_length": _checks.check_positive_float,
    "jitter": _checks.check_fraction,
    "dense_mass": _checks.check_bool,
    "adapt_mass_matrix": _checks.check_bool,
    "adapt_step_size": _checks.check_bool,
    "unroll": _check_unroll,
    "scan": lambda v, k: _checks.check_choice(v, k, ["auto", "sequential", "blocked"]),
    "chain_block": _check_chain_block,
}


def option_checks(defaults: Mapping[str, Any]) -> dict[str, Callable]:
    """The checks of :data:`OPTION_CHECKS` for every option in ``defaults``."""
    return {name: OPTION_CHECKS[name] for name in defaults}
