"""Calibration of the sandwich standard errors: coverage of 95% Wald intervals.

Simulates ``--reps`` data sets of ``--n`` observations from a 2-D Gaussian graphical model with
precision ``K`` (energy ``½ xᵀKx``), fits each with SM, SSM and NCE, and counts how often the 95%
interval of each free entry of ``K`` covers the truth. A calibrated SE gives 95% up to the
binomial error ``sqrt(0.95 · 0.05 / reps)`` (0.69% at 1000 repetitions).

    python benchmarks/coverage.py --reps 1000 --n 500
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import unnorm as un

K_TRUE = np.array([[1.5, -0.6], [-0.6, 1.0]])
FREE = [(0, 0), (0, 1), (1, 1)]


def _energy(params, x):
    return 0.5 * x @ params["K"] @ x


MODEL = un.Model(_energy, params={"K": jnp.eye(2)},
                 constraints={"K": un.constraints.positive_definite},
                 support=un.supports.real(2), name="ggm2")


def coverage(estimator, reps: int, n: int, seed: int = 0, level: float = 0.95) -> dict:
    """Fraction of ``reps`` simulated fits whose interval covers each free entry of K."""
    rng = np.random.default_rng(seed)
    cov = np.linalg.inv(K_TRUE)
    hits = np.zeros(len(FREE))
    z_sq = np.zeros(len(FREE))
    for rep in range(reps):
        data = rng.multivariate_normal(np.zeros(2), cov, size=n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = un.fit(MODEL, data, estimator, key=jax.random.key(rep), progress_bar=False)
        lower, upper = fit.conf_int(level)["K"]
        for j, (a, b) in enumerate(FREE):
            hits[j] += lower[a, b] <= K_TRUE[a, b] <= upper[a, b]
            z_sq[j] += ((fit.params["K"][a, b] - K_TRUE[a, b]) / fit.stderr["K"][a, b]) ** 2
    return {"coverage": (hits / reps).tolist(), "mean_z2": (z_sq / reps).tolist(),
            "parameters": [f"K[{a},{b}]" for a, b in FREE], "reps": reps, "n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"
                                             / "coverage.json"))
    args = parser.parse_args()
    results = {}
    for name, estimator in [("sm", un.estimators.SM()),
                            ("ssm", un.estimators.SSM(num_projections=1)),
                            ("nce", un.estimators.NCE(nu=4))]:
        started = time.perf_counter()
        results[name] = coverage(estimator, args.reps, args.n)
        results[name]["seconds"] = time.perf_counter() - started
        print(name, results[name])
    pathlib.Path(args.out).write_text(json.dumps(
        {"jax": jax.__version__, "unnorm": un.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
