"""A Bernoulli RBM on the binarized digits with unnorm's defaults, against scikit-learn.

Run from the repository root (needs the ``bench`` extra for scikit-learn)::

    python benchmarks/rbm_digits.py              # defaults of both libraries
    python benchmarks/rbm_digits.py --schedules  # and unnorm's PCD under other optimizers
    python benchmarks/rbm_digits.py --quick      # fewer steps, a smoke test of the script

The model: ``un.models.rbm(64, 16)`` (64 · 16 + 64 + 16 = 1,104 parameters) on the 1,797 8 × 8
digits of scikit-learn's ``load_digits``, each pixel binarized at half its range. Fitted by
``un.fit(model, x, "pcd", key=...)`` with every option at its default, and by
``sklearn.neural_network.BernoulliRBM(n_components=16, random_state=0)`` with its defaults
(PCD with one Gibbs step, Tieleman 2008; learning rate 0.1, batches of 10, 10 epochs).

Each fit is scored by the exact mean log-likelihood per image, in nats: 16 hidden units sum out
in closed form (the free energy), and the normalizing constant is a sum over the 2^16 hidden
configurations, ``log Z = log Σ_h exp(cᵀh + Σ_i softplus(b_i + (Wh)_i))``. Results go to
``benchmarks/results/rbm_digits.json``; speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import jax
import machine  # benchmarks/machine.py: this script's folder is on sys.path
import numpy as np
from scipy.special import logsumexp

import unnorm as un

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "rbm_digits.json"
NUM_HIDDEN = 16


def binarized_digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0 > 0.5).astype(np.float32)


def exact_mean_log_likelihood(W, b, c, x) -> float:
    """Mean ``log p(v)`` over the rows of ``x``: ``-F(v) - log Z`` with ``log Z`` summed over
    every hidden configuration (the visible units sum out in closed form given ``h``)."""
    W, b, c, x = (np.asarray(a, dtype=np.float64) for a in (W, b, c, x))
    num_hidden = W.shape[1]
    codes = np.arange(2**num_hidden)
    hidden = ((codes[:, None] >> np.arange(num_hidden)) & 1).astype(np.float64)
    log_z = logsumexp(hidden @ c + np.sum(np.logaddexp(0.0, b + hidden @ W.T), axis=1))
    minus_free_energy = x @ b + np.sum(np.logaddexp(0.0, c + x @ W), axis=1)
    return float(np.mean(minus_free_energy) - log_z)


def _decaying(learning_rate: float, num_steps: int, final: float):
    """Constant for the first half of the run, then exponential decay to ``final``."""
    import optax

    half = num_steps // 2
    return optax.join_schedules(
        [optax.constant_schedule(learning_rate),
         optax.exponential_decay(learning_rate, num_steps - half, final / learning_rate)],
        [half])


def schedules(num_steps: int) -> dict:
    """The optimizers the PCD fit is compared under (``--schedules``), by label."""
    import optax

    return {
        "Adam 1e-3 (the default before, for more than 1,000 parameters)": optax.adam(1e-3),
        "Adam 1e-2": optax.adam(1e-2),
        "Adam 1e-2, cosine decay to 0": optax.adam(optax.cosine_decay_schedule(1e-2,
                                                                               num_steps)),
        "Adam 3e-2, then exponential decay to 1e-4": optax.adam(_decaying(3e-2, num_steps,
                                                                          1e-4)),
    }


def fit_unnorm(x: np.ndarray, num_steps: int | None, optimizer=None,
               label: str = "unnorm pcd (defaults)") -> dict:
    model = un.models.rbm(x.shape[1], NUM_HIDDEN)
    options = {} if num_steps is None else {"num_steps": num_steps}
    if optimizer is not None:
        options["optimizer"] = optimizer
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = un.fit(model, x, "pcd", key=jax.random.key(0), progress_bar=False, **options)
    seconds = time.perf_counter() - started
    params = fit.params
    return {"impl": label, "seconds": seconds,
            "log_likelihood": exact_mean_log_likelihood(params["W"], params["b"], params["c"], x),
            "converged": bool(fit.converged), "num_steps": int(fit.num_steps),
            "stages": list(fit.stages),
            "warnings": sorted({f"{w.category.__name__}: {str(w.message)[:160]}"
                                for w in caught})}


def fit_sklearn(x: np.ndarray, n_iter: int | None) -> dict:
    from sklearn.neural_network import BernoulliRBM

    options = {} if n_iter is None else {"n_iter": n_iter}
    rbm = BernoulliRBM(n_components=NUM_HIDDEN, random_state=0, **options)
    started = time.perf_counter()
    rbm.fit(x)
    seconds = time.perf_counter() - started
    # scikit-learn's energy: -vᵀWh - bᵀv - cᵀh with components_ = Wᵀ, intercept_visible_ = b
    return {"impl": "scikit-learn BernoulliRBM (defaults)", "seconds": seconds,
            "log_likelihood": exact_mean_log_likelihood(rbm.components_.T,
                                                        rbm.intercept_visible_,
                                                        rbm.intercept_hidden_, x),
            "converged": None, "num_steps": int(rbm.n_iter * np.ceil(len(x) / rbm.batch_size))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps (a smoke test)")
    parser.add_argument("--schedules", action="store_true",
                        help="also fit unnorm's PCD under other optimizers")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)
    x = binarized_digits()
    num_steps = 50 if args.quick else None
    rows = [fit_sklearn(x, 1 if args.quick else None), fit_unnorm(x, num_steps)]
    if args.schedules:
        rows += [fit_unnorm(x, num_steps, optimizer, f"unnorm pcd, {label}")
                 for label, optimizer in schedules(num_steps or 3000).items()]
    best = max(row["log_likelihood"] for row in rows)
    for row in rows:
        row["behind_best_nats"] = best - row["log_likelihood"]
    print(f"{'impl':70s} {'log-lik/image':>14s} {'behind':>8s} {'seconds':>8s} converged")
    for row in rows:
        print(f"{row['impl']:70s} {row['log_likelihood']:14.3f} {row['behind_best_nats']:8.3f} "
              f"{row['seconds']:8.1f} {row['converged']}")
        for line in row.get("warnings", []):
            print(f"    {line}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"environment": machine.environment(("jax", "unnorm", "scikit-learn")),
              "quick": args.quick, "schedules": args.schedules, "rows": rows}
    args.out.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
