"""Calibration of the sandwich standard errors (a slow simulation study).

Runs the study of benchmarks/coverage.py: 95% intervals of SM, SSM and NCE (ν = 4, log Z learned
as a nuisance parameter) on a 2-D Gaussian graphical model, over 1000 simulated data sets of
n = 500. A calibrated SE covers 95% of the time
up to a binomial error of 0.69%; the issue's window 93-97% is ±2.9 binomial SE.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

import unnorm as un

_PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "coverage.py"
_SPEC = importlib.util.spec_from_file_location("coverage_study", _PATH)
study = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(study)


@pytest.mark.slow
@pytest.mark.parametrize("estimator",
                         [un.estimators.SM(), un.estimators.SSM(), un.estimators.NCE(nu=4)],
                         ids=["sm", "ssm", "nce"])
def test_wald_intervals_cover_the_truth_95_percent(estimator):
    result = study.coverage(estimator, reps=1000, n=500, seed=1)
    for name, covered in zip(result["parameters"], result["coverage"], strict=True):
        assert 0.93 <= covered <= 0.97, (name, covered)
