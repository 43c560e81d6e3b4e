"""Convergence checks run after sampling, worded like PyMC's.

The thresholds follow Vehtari et al. (2021), as ArviZ and PyMC use them: rank-normalized split
R-hat above 1.01, or a bulk effective sample size below 100 per chain, mean the draws should not
yet be trusted; any divergence after warmup means the sampler missed part of the distribution.

Examples
--------
>>> import numpy as np, warnings
>>> from unnorm.diagnostics import convergence_problems
>>> rng = np.random.default_rng(0)
>>> convergence_problems(rng.normal(size=(4, 1000, 2)), np.zeros((4, 1000), bool))
[]
"""

from __future__ import annotations

import warnings

import numpy as np

from ._compat import rhat_and_ess

__all__ = ["ConvergenceWarning", "convergence_problems", "warn_convergence",
           "step_cap_problems", "warn_step_cap"]

RHAT_THRESHOLD = 1.01
ESS_PER_CHAIN_THRESHOLD = 100
#: the share of draws reaching a sampler's step cap (NUTS's tree depth, HMC's max_num_steps)
#: worth a warning: an occasional long trajectory is normal, a tenth of the draws is not
STEP_CAP_SHARE = 0.1
#: an adapted step size below this, in the unconstrained space scaled by the adapted mass
#: matrix (where healthy targets get 0.1 to 1), has collapsed
COLLAPSED_STEP_SIZE = 1e-4


class ConvergenceWarning(UserWarning):
    """The chains show signs of not having converged or of biased exploration."""


def convergence_problems(
    draws: np.ndarray, diverging: np.ndarray,
    divergence_advice: str = "Increase target_accept or reparameterize.",
) -> list[str]:
    """Sentences describing each problem found in ``(chain, draw, ...)`` draws; empty if none.
    ``divergence_advice`` ends the sentence on divergences (each sampler's spec has its own)."""
    problems = []
    num_chains = draws.shape[0]
    num_divergent = int(np.sum(diverging))
    if num_divergent:
        problems.append(
            f"There were {num_divergent} divergences after warmup "
            f"({num_divergent / diverging.size:.1%} of draws). {divergence_advice}"
        )
    rhat, ess = rhat_and_ess(draws)
    if num_chains >= 2:
        high = np.flatnonzero(np.nan_to_num(rhat, nan=1.0) > RHAT_THRESHOLD)
        if high.size:
            problems.append(
                f"The rank-normalized R-hat is larger than {RHAT_THRESHOLD} for {high.size} "
                f"coordinate(s) (max {np.nanmax(rhat):.3f}, at flat index {int(high[0])}). "
                "The chains have not mixed: run longer or check for multimodality."
            )
    low = np.flatnonzero(np.nan_to_num(ess, nan=np.inf) / num_chains < ESS_PER_CHAIN_THRESHOLD)
    if low.size:
        problems.append(
            f"The effective sample size per chain is smaller than {ESS_PER_CHAIN_THRESHOLD} for "
            f"{low.size} coordinate(s) (min {np.nanmin(ess) / num_chains:.0f} per chain). "
            "Draw more samples or use a better-adapted sampler."
        )
    return problems


def warn_convergence(draws: np.ndarray, diverging: np.ndarray, sampler: str,
                     divergence_advice: str, stacklevel: int = 3) -> None:
    """Issue one :class:`ConvergenceWarning` per problem found by :func:`convergence_problems`,
    each prefixed with the ``sampler``'s name; ``stacklevel`` as :func:`warnings.warn` takes
    it, counted from this function's caller's caller (the public function by default)."""
    for problem in convergence_problems(draws, diverging, divergence_advice):
        warnings.warn(f"[{sampler}] {problem}", ConvergenceWarning, stacklevel=stacklevel)


def step_cap_problems(n_steps: np.ndarray, step_size: np.ndarray, min_steps: int,
                      what: str) -> list[str]:
    """A sentence when a sizeable share (:data:`STEP_CAP_SHARE`) of the draws took at least
    ``min_steps`` integration steps (the sampler's cap; ``what`` says which), or when the
    adapted step size collapsed below :data:`COLLAPSED_STEP_SIZE`; empty otherwise.

    Examples
    --------
    >>> problem = step_cap_problems(np.full((2, 50), 1024), np.full((2, 50), 7.7e-7), 1024,
    ...                             "hit the cap of 1024 steps (max_num_steps=1024)")[0]
    >>> print(problem.split(", and")[0])
    100% of the draws hit the cap of 1024 steps (max_num_steps=1024)
    >>> print(problem.split(": ")[0].split(", and ")[1])
    the step size adapted down to 7.7e-07
    """
    n_steps = np.asarray(n_steps)
    share = float(np.mean(n_steps >= min_steps)) if n_steps.size else 0.0
    smallest = float(np.min(step_size)) if np.size(step_size) else np.inf
    collapsed = smallest < COLLAPSED_STEP_SIZE
    if share < STEP_CAP_SHARE and not collapsed:
        return []
    if share >= STEP_CAP_SHARE:
        head = f"{share:.0%} of the draws {what}"
        if collapsed:
            head += f", and the step size adapted down to {smallest:.2g}"
    else:
        head = f"The step size adapted down to {smallest:.2g}"
    return [
        f"{head}: the density may be improper (exp(-E) not integrable on the support, e.g. an "
        "energy that decreases without bound, so that the chains run off to infinity), or the "
        "target too stiff for one step size. Check that exp(-E) is normalizable; if it is, "
        "reparameterize, or raise the cap."
    ]


def warn_step_cap(n_steps: np.ndarray, step_size: np.ndarray, min_steps: int, what: str,
                  sampler: str, stacklevel: int = 3) -> None:
    """Issue the :class:`ConvergenceWarning` of :func:`step_cap_problems`, if any, prefixed
    with the ``sampler``'s name; ``stacklevel`` as in :func:`warn_convergence`."""
    for problem in step_cap_problems(n_steps, step_size, min_steps, what):
        warnings.warn(f"[{sampler}] {problem}", ConvergenceWarning, stacklevel=stacklevel)
