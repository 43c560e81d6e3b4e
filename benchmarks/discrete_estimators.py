"""Calibration and cost of the partition-free estimators for binary and spin data: PL, RM, MPF.

For each model, simulates ``--reps`` data sets by exact enumeration (i.i.d. draws from the
normalized probabilities of every configuration) and fits each with pseudo-likelihood (Besag
1975), ratio matching (Hyvärinen 2007) and minimum probability flow (Sohl-Dickstein, Battaglino
& DeWeese 2011). Per parameter it records the mean reported (sandwich) standard error, the Monte
Carlo standard deviation of the estimates, their ratio — 1 when the standard errors are
calibrated, with a Monte Carlo error of about ``1/sqrt(2·reps)`` (5% at 200 data sets) — the
coverage of the 95% Wald intervals and the ratio of the mean SE to the MLE's (the inverse
Fisher information, by enumeration); per estimator, the mean time of a fit.

Every fit starts at the truth (the model's own parameters) and runs 100 optimizer steps before
Newton's (for RM; PL and MPF, convex for these energies, go to Newton at once): the study is of
the standard errors, not of the optimizer, and one model object per row lets every fit after the
first reuse the compiled code.

    python benchmarks/discrete_estimators.py              # 200 data sets per model
    python benchmarks/discrete_estimators.py --reps 10 --out /tmp/discrete.json   # a quick check
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
from jax.flatten_util import ravel_pytree

import unnorm as un

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "discrete_estimators.json"
ESTIMATORS = ("pl", "rm", "mpf")


def models() -> dict[str, tuple[un.Model, int]]:
    """name -> (true model, sample size). The three-unit model is docs/partition.md's (couplings
    -1, -1, 2 and field 1 on the second unit). On {0, 1} units its rarest state has probability
    1.2% and n = 5000 suffices. On spins two of its states have probability 2.9e-4 each: at
    n = 5000 both are missing from 6% of data sets, where the MLE does not exist; at n = 30000
    (8.6 expected draws each) RM's estimate of h[0], which those states drive, was still
    heavy-tailed (kurtosis 8.4) and its SE / SD ratio 0.84 and 1.08 for two seeds; at
    n = 100000 the kurtosis was 3.4 and the ratio 0.91."""
    w, b = jnp.array([-1.0, -1.0, 2.0]), jnp.array([0.0, 1.0, 0.0])
    return {
        "bm3_binary": (un.models.boltzmann(W=w, b=b), 5000),
        "chain10": (un.models.ising_chain(10, coupling=0.4, field=0.2), 5000),
        "bm3": (un.models.ising(J=w, h=b), 100_000),
    }


def fisher_se(model: un.Model, n: int) -> np.ndarray:
    """The MLE's asymptotic standard errors at ``model.params``, ``sqrt(diag(I⁻¹) / n)``, with
    the Fisher information ``I = Cov_p(∇_θE)`` summed over every configuration (the score of
    ``p ∝ exp(-E)`` is ``E_p[∇_θE] - ∇_θE``): the floor the other estimators' SEs sit above."""
    flat, unravel = ravel_pytree(model.params)
    configs = model.support.enumerate()
    grads = np.asarray(jax.vmap(jax.grad(lambda f, x: model.energy(unravel(f), x)), (None, 0))(
        flat, configs), dtype=float)
    energies = np.asarray(jax.vmap(lambda x: model.energy(model.params, x))(configs),
                          dtype=float)
    prob = np.exp(-energies - np.logaddexp.reduce(-energies))
    centred = grads - prob @ grads
    information = (centred * prob[:, None]).T @ centred
    return np.sqrt(np.diag(np.linalg.inv(information)) / n)


def calibration(estimator: str | un.estimators.Estimator, model: un.Model, n: int, reps: int,
                seed: int = 0, num_steps: int = 100) -> dict:
    """Fits of ``reps`` exact data sets of ``n`` draws from ``model`` (at ``model.params``),
    each started at the truth: per parameter the mean reported SE, the Monte Carlo SD of the
    estimates, their ratio and the 95% coverage; the mean fit time (without the first fit,
    which compiles) and the number of fits whose Newton steps did not converge."""
    configs = np.asarray(model.support.enumerate())
    energies = np.asarray(jax.vmap(lambda x: model.energy(model.params, x))(configs),
                          dtype=float)
    prob = np.exp(-(energies - energies.min()))
    prob /= prob.sum()
    truth = np.concatenate([np.ravel(np.asarray(leaf, dtype=float))
                            for leaf in jax.tree_util.tree_leaves(model.params)])
    rng = np.random.default_rng(seed)
    estimates, stderrs, times, not_converged, names = [], [], [], 0, None
    for rep in range(reps):
        data = configs[rng.choice(len(configs), size=n, p=prob)]
        with warnings.catch_warnings():
            # a fit whose Newton steps stop short is counted below, not printed 200 times
            warnings.simplefilter("ignore", RuntimeWarning)
            fit = un.fit(model, data, estimator, key=jax.random.key(rep), num_steps=num_steps,
                         progress_bar=False)
        names = fit.names
        summary = fit.summary()
        estimates.append(summary["estimate"].to_numpy())
        stderrs.append(summary["std_err"].to_numpy())
        times.append(fit.wall_time)
        not_converged += not fit.converged
    estimates, stderrs = np.array(estimates), np.array(stderrs)
    mean_se = stderrs.mean(axis=0)
    mc_sd = estimates.std(axis=0, ddof=1)
    mle_se = fisher_se(model, n)
    covered = np.abs(estimates - truth) <= 1.959964 * stderrs
    return {
        "parameters": names,
        "truth": truth.tolist(),
        "mean_estimate": estimates.mean(axis=0).tolist(),
        "mean_se": mean_se.tolist(),
        "mc_sd": mc_sd.tolist(),
        "se_ratio": (mean_se / mc_sd).tolist(),
        "coverage_95": covered.mean(axis=0).tolist(),
        "mle_se": mle_se.tolist(),
        "se_over_mle_se": (mean_se / mle_se).tolist(),
        "first_fit_s": times[0],
        "mean_fit_s": float(np.mean(times[1:])) if reps > 1 else times[0],
        "not_converged": int(not_converged),
        "reps": reps,
        "n": n,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(ESTIMATORS),
                        help=f"comma-separated subset of {','.join(ESTIMATORS)}")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    if set(chosen) - set(ESTIMATORS):
        parser.error(f"--only: choose from {', '.join(ESTIMATORS)}; got {args.only!r}")
    started = time.perf_counter()
    results = {}
    for model_name, (model, n) in models().items():
        for estimator in chosen:
            row = calibration(estimator, model, n, args.reps, seed=args.seed)
            results[f"{model_name}/{estimator}"] = row
            ratios = ", ".join(f"{p} {r:.3f}" for p, r in zip(row["parameters"], row["se_ratio"],
                                                               strict=True))
            print(f"{model_name:10s} {estimator:3s} n={n:<6d} SE/SD: {ratios}; mean fit "
                  f"{row['mean_fit_s']:.3f} s (first {row['first_fit_s']:.1f} s), "
                  f"not converged {row['not_converged']}", flush=True)
    # imported here: tests/test_discrete_coverage.py loads this file as a module, without its
    # folder (where machine.py lives) on sys.path, and never writes the record
    import machine

    args.out.write_text(json.dumps({
        "config": {"reps": args.reps, "seed": args.seed, "estimators": chosen,
                   "start": "truth", "num_steps": 100},
        "environment": machine.environment(("jax", "numpy", "unnorm")),
        "total_s": time.perf_counter() - started,
        "results": results,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
