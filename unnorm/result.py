"""What :func:`unnorm.fit` returns: estimates, standard errors and the record of the run."""

from __future__ import annotations

import dataclasses
import functools
from statistics import NormalDist
from typing import Any

import jax
import numpy as np
import pandas as pd

from . import _checks
from .uncertainty import parameter_names

__all__ = ["FitResult"]


@dataclasses.dataclass(frozen=True, repr=False)
class FitResult:
    """The result of :func:`unnorm.fit`: plain arrays, no closures.

    Attributes
    ----------
    params : dict
        Estimates in the constrained space, with the structure of ``model.params``.
    stderr : dict or None
        Asymptotic standard errors with the same structure (sandwich covariance, see
        :mod:`unnorm.uncertainty`); ``None`` when they were not computed (``stderr=False``, or a
        model with more parameters than ``stderr="auto"`` handles).
    covariance : numpy.ndarray or None
        Covariance of the flattened constrained parameters, in the order of :attr:`names`.
    names : list of str
        One label per scalar parameter: ``mu[0]``, ``prec[0,1]`` (built on first use: a neural
        energy has tens of thousands).
    loss : numpy.ndarray
        The objective at every optimizer step (empty for a closed-form fit); a step whose loss
        or gradient was not finite was skipped and holds NaN here (counted in ``skipped_steps``).
    converged : bool
        Whether the stopping rule was met (always true for a closed-form solution).
    num_steps : int
        Optimizer steps taken (0 for a closed-form solution).
    wall_time : float
        Seconds, compilation included.
    estimator : str
        The estimator's name; ``options`` holds its settings.
    method : str
        The stages that found θ̂, joined: ``"closed form"`` (one linear solve), ``"newton"``,
        ``"optimizer"``, ``"optimizer + newton"`` (the optimizer's answer refined by Newton
        steps on the full-data objective) or ``"optimizer + Monte Carlo MLE"``.
    stages : tuple of str
        Every stage that ran, in order: the solve stages of ``method``, then how the covariance
        was computed (``"sandwich"``, ``"U-statistic sandwich"``, ``"likelihood sandwich from
        model draws"``); planned by :func:`unnorm.fit` from the estimator's traits.
    chains : InferenceData or None
        The MCMC chains of a chain-based estimator (MLE, CD, PCD): draws from the fitted model,
        which its standard errors are computed from; ``None`` for the estimators that draw no
        samples (score matching, pseudo-likelihood, NCE, KSD).
    nuisance, nuisance_stderr : dict or None
        The estimator's own parameters and their standard errors, e.g. NCE's
        ``{"log_z": ...}``, the log normalizing constant it learns with θ; ``None`` otherwise.
    """

    params: dict[str, Any]
    stderr: dict[str, Any] | None
    covariance: np.ndarray | None
    loss: np.ndarray
    converged: bool
    num_steps: int
    wall_time: float
    estimator: str
    method: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    skipped_steps: int = 0
    num_observations: int = 0
    chains: Any = None
    nuisance: dict[str, Any] | None = None
    nuisance_stderr: dict[str, Any] | None = None
    stages: tuple[str, ...] = ()

    @functools.cached_property
    def names(self) -> list[str]:
        return parameter_names(self.params)

    # ---- intervals and tables --------------------------------------------------------------------
    def _flat(self, tree) -> np.ndarray:
        leaves = [np.ravel(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
        return np.concatenate(leaves) if leaves else np.zeros(0)

    def conf_int(self, level: float = 0.95) -> dict[str, tuple[Any, Any]]:
        """Wald intervals ``estimate ± z_{(1+level)/2} · std_err`` per parameter.

        Returns a dict name -> ``(lower, upper)`` with arrays shaped like the parameter.

        Raises
        ------
        ValueError
            When standard errors were not computed.
        """
        level = _checks.check_probability(level, "level")
        if self.stderr is None:
            raise ValueError(
                "this fit has no standard errors (fit with stderr=True to compute them), so it "
                "has no confidence intervals."
            )
        z = NormalDist().inv_cdf(0.5 + level / 2)
        return {
            name: (np.asarray(value) - z * np.asarray(self.stderr[name]),
                   np.asarray(value) + z * np.asarray(self.stderr[name]))
            for name, value in self.params.items()
        }

    def summary(self, level: float = 0.95) -> pd.DataFrame:
        """One row per scalar parameter, columns ``estimate std_err ci_lower ci_upper``."""
        level = _checks.check_probability(level, "level")
        estimate = self._flat(self.params)
        if self.stderr is None:
            se = np.full_like(estimate, np.nan)
        else:
            se = self._flat(self.stderr)
        z = NormalDist().inv_cdf(0.5 + level / 2)
        table = pd.DataFrame(
            {"estimate": estimate, "std_err": se, "ci_lower": estimate - z * se,
             "ci_upper": estimate + z * se},
            index=pd.Index(self.names, name="parameter"),
        )
        return table

    def __repr__(self) -> str:
        state = "converged" if self.converged else "NOT converged"
        head = (f"FitResult(estimator={self.estimator!r}, method={self.method!r}, {state}, "
                f"n={self.num_observations}, steps={self.num_steps}, "
                f"wall_time={self.wall_time:.2f}s)")
        lines = [head]
        if self.stderr is None:
            lines.append("standard errors not computed (fit with stderr=True)")
        with pd.option_context("display.max_rows", 40, "display.width", 100):
            lines.append(str(self.summary()))
        return "\n".join(lines)

    __str__ = __repr__

