"""Convergence checks run after sampling, worded like PyMC's.

The thresholds follow Vehtari et al. (2021), as ArviZ and PyMC use them: rank-normalized split
R-hat above 1.01, or a bulk effective sample size below 100 per chain, mean the draws should not
yet be trusted; any divergence after warmup means the sampler missed part of the distribution.

Example
-------
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

__all__ = ["ConvergenceWarning", "convergence_problems", "warn_convergence"]

RHAT_THRESHOLD = 1.01
ESS_PER_CHAIN_THRESHOLD = 100


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
                     divergence_advice: str) -> None:
    """Issue one :class:`ConvergenceWarning` per problem found by :func:`convergence_problems`,
    each prefixed with the ``sampler``'s name."""
    for problem in convergence_problems(draws, diverging, divergence_advice):
        warnings.warn(f"[{sampler}] {problem}", ConvergenceWarning, stacklevel=3)
