"""The AIS runs behind :func:`unnorm.log_partition`: replicates pooled, the doubling of
``num_temperatures`` while the estimate still rises, and the warnings on what the runs show
(heavy-tailed weights, an estimate still rising).

Annealed importance sampling (Neal 2001) is unbiased for ``Z`` whatever the schedule, but with
chains that lag behind the intermediate distributions the paths that carry much of ``Z`` become
rare, and a run that misses them is biased low with weights that can look well balanced. Its
sign is an estimate that rises when the schedule is refined.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import numpy as np

from .ais import AISSummary, annealed_log_partition, default_chunk_length, summarize
from .diagnostics import ConvergenceWarning
from .model import Model

__all__ = ["AISStage", "DOUBLING_TAG", "MIN_ESS_FRACTION", "PARETO_K_THRESHOLD", "RISE_THRESHOLD",
           "anneal_with_doublings", "pareto_k_threshold", "rise_between", "run_stage",
           "warn_heavy_weights", "warn_still_rising"]

#: AIS weights with a Pareto k̂ above ``min(1 - 1/log10(S), 0.7)`` for S weights have too heavy
#: a tail for their mean or its standard error to be trusted (Vehtari, Simpson, Gelman, Yao &
#: Gabry 2024, PSIS, §3: the threshold falls with the sample size, 0.45 for 64 weights)
PARETO_K_THRESHOLD = 0.7


def pareto_k_threshold(num_weights: int) -> float:
    """The sample-size-dependent k̂ threshold of Vehtari et al. (2024)."""
    return min(1.0 - 1.0 / np.log10(max(num_weights, 11)), PARETO_K_THRESHOLD)


#: ... or an effective sample size below this fraction of the chains
MIN_ESS_FRACTION = 0.1
#: A doubling of ``num_temperatures`` that raises the estimate by more than this many standard
#: errors of the difference says that the estimate is still rising (one-sided, about 2% of
#: checks of a schedule already fine enough)
RISE_THRESHOLD = 2.0
# folded into the key for the doubled schedules' runs, away from the replicates' fold_in(key, r)
DOUBLING_TAG = 0x5C4ED


class AISStage(NamedTuple):
    """The runs of one schedule: their pooled weights' summary, the standard error reported for
    it, the chains' final positions (continuous supports) and the stage before (coarser)."""

    num_temperatures: int
    pooled: AISSummary
    stderr: float
    final_positions: np.ndarray | None
    previous: AISStage | None = None


def run_stage(model: Model, params, key, num_temperatures: int, num_replicates: int,
              options: dict) -> AISStage:
    """``num_replicates`` independent runs of ``num_temperatures`` temperatures (keys
    ``fold_in(key, r)``, or ``key`` itself for one run), pooled."""
    runs = [annealed_log_partition(
        model, params, key if num_replicates == 1 else jax.random.fold_in(key, replicate),
        num_temperatures=num_temperatures, **options) for replicate in range(num_replicates)]
    pooled = summarize(np.concatenate([run.log_weights for run in runs]), runs[0].log_z0)
    stderr = pooled.stderr
    if num_replicates > 1:
        # the spread of independent runs: honest where the weights' own variance is not
        per_run = [summarize(run.log_weights, run.log_z0).estimate for run in runs]
        stderr = float(np.std(per_run, ddof=1) / np.sqrt(num_replicates))
    final = (None if model.support.is_discrete else
             np.concatenate([run.final_positions for run in runs]))
    return AISStage(num_temperatures, pooled, stderr, final)


def rise_between(coarse: AISStage, fine: AISStage) -> tuple[float, float]:
    """How far the finer schedule's estimate lies above the coarser one's, and the standard
    error of that difference (the two stages are independent)."""
    combined = float(np.hypot(coarse.stderr, fine.stderr))
    return fine.pooled.estimate - coarse.pooled.estimate, combined


def warn_still_rising(stage: AISStage, max_doublings: int) -> None:
    """A :class:`~unnorm.diagnostics.ConvergenceWarning` when the last doubling of
    ``num_temperatures`` still raised the estimate by more than ``RISE_THRESHOLD`` standard
    errors of the difference."""
    rise, combined = rise_between(stage.previous, stage)
    if not rise > RISE_THRESHOLD * combined:
        return
    warnings.warn(
        f"method='ais': the estimate is still rising with num_temperatures: "
        f"{stage.previous.num_temperatures} temperatures gave {stage.previous.pooled.estimate:.3f} "
        f"± {stage.previous.stderr:.3f}, {stage.num_temperatures} gave "
        f"{stage.pooled.estimate:.3f} ± {stage.stderr:.3f} ({rise / combined:.1f} standard "
        "errors of the difference higher), so the chains still lag behind the intermediate "
        "distributions and the estimate returned (the finer one) is probably biased low as "
        f"well, possibly by as much as the rise ({rise:.3f}); its standard error does not include "
        "that. "
        f"Raise num_temperatures (to {2 * stage.num_temperatures} or more) or max_doublings "
        f"(now {max_doublings}); more chains or replicates do not help.",
        ConvergenceWarning, stacklevel=3)


def warn_heavy_weights(summary: AISSummary, num_replicates: int) -> None:
    """A :class:`~unnorm.diagnostics.ConvergenceWarning` when the weights' tail is too heavy
    for the delta-method standard error."""
    threshold = pareto_k_threshold(summary.num_kept)
    heavy = summary.khat > threshold
    few = summary.ess < MIN_ESS_FRACTION * summary.num_kept
    if not (heavy or few):
        return
    remedy = ("the standard error comes from the spread of the independent runs, but the "
              "estimate itself may still be biased low" if num_replicates > 1 else
              "its standard error understates the error and the estimate may be biased low; "
              "pass num_replicates=10 (or more) for a standard error from the spread of "
              "independent runs")
    warnings.warn(
        f"method='ais': the importance weights are heavy-tailed (Pareto k̂ = "
        f"{summary.khat:.2f}, threshold {threshold:.2f} for {summary.num_kept} weights; "
        "effective sample size "
        f"{summary.ess:.1f} of {summary.num_kept} chains, "
        f"{summary.ess / summary.num_kept:.0%}): {remedy}. Raise num_temperatures (or "
        "num_mcmc_steps) so the chains stay near each intermediate distribution; max_doublings=2 "
        "doubles num_temperatures while the estimate still rises.",
        ConvergenceWarning, stacklevel=3)


def anneal_with_doublings(model: Model, params, key, num_temperatures: int,
                          num_replicates: int, max_doublings: int, options: dict) -> AISStage:
    """The first stage of ``num_temperatures``, then up to ``max_doublings`` stages of twice the
    temperatures of the one before while the estimate rises by more than one standard error of
    the difference; the last stage, which links to those before it."""
    # the doubled schedules' runs reuse the first run's compiled program
    options = dict(options, chunk_length=default_chunk_length(num_temperatures))
    stage = run_stage(model, params, key, num_temperatures, num_replicates, options)
    for doubling in range(1, max_doublings + 1):
        # a finer schedule from fresh chains (keys disjoint from the replicates'): the
        # estimate of a run that still lags behind γ_β rises as the schedule is refined
        doubling_key = jax.random.fold_in(jax.random.fold_in(key, DOUBLING_TAG), doubling)
        finer = run_stage(model, params, doubling_key, 2 * stage.num_temperatures,
                          num_replicates, options)
        rise, combined = rise_between(stage, finer)
        stage = finer._replace(previous=stage)
        if rise <= combined:
            break
    return stage
