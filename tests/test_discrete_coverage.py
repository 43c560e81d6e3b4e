"""Calibration of the sandwich standard errors of ratio matching and minimum probability flow
(a slow simulation study).

Runs the study of benchmarks/discrete_estimators.py with another seed: 200 exact data sets per
model (n = 5000; n = 100000 for the peaked three-spin model, see its ``models``), each fitted
from the truth. With 200 data sets the Monte Carlo SD of the estimates carries a relative error
of about 1/sqrt(2·199) = 5%, so the 20% window on the ratio mean SE / SD is 4 of those errors.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "discrete_estimators.py"
_SPEC = importlib.util.spec_from_file_location("discrete_study", _PATH)
study = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(study)

MODELS = study.models()


@pytest.mark.slow
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("estimator", ["rm", "mpf"])
def test_mean_standard_error_matches_the_spread_of_the_estimates(estimator, model_name):
    model, n = MODELS[model_name]
    result = study.calibration(estimator, model, n, reps=200, seed=1)
    # the numbers behind the verdict, for the record (shown with pytest -s)
    print(f"{model_name} {estimator}: SE/SD " + ", ".join(
        f"{p} {r:.3f}" for p, r in zip(result["parameters"], result["se_ratio"], strict=True)))
    assert result["not_converged"] == 0
    for name, ratio in zip(result["parameters"], result["se_ratio"], strict=True):
        assert 0.8 <= ratio <= 1.2, (name, ratio, result)
