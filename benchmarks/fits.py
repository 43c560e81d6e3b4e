"""Fit speed: ``un.fit`` with each estimator, cold and warm, against the same fit written as a
plain jitted JAX loop.

Run from the repository root::

    python benchmarks/fits.py                  # full run
    python benchmarks/fits.py --quick          # small sizes, a smoke test of the script
    python benchmarks/fits.py --only gaussian:sm,ising:pl --out /tmp/fits.json

Two models and data sets (fixed seeds):

* ``gaussian``: ``un.models.gaussian(2)`` (start μ = 0, Λ = I), n = 3000 draws of
  N(μ = [1, -0.5], Λ⁻¹) with Λ = [[2, 0.6], [0.6, 1]];
* ``ising``: ``un.models.ising_chain(10)`` (start coupling = field = 0), n = 3000 exact draws
  of the chain with coupling 0.4 and field 0.2 (the 2^10 configurations of
  ``model.support.enumerate()`` and their normalized probabilities).

Each row (an estimator on a model) runs in a fresh Python process (this script with
``--worker``), which measures

1. ``import_s``: ``import unnorm`` (``import jax`` before it is timed apart, ``jax_import_s``);
2. ``cold_s``: the first ``un.fit`` in the process (compilation included), with the
   estimator's defaults and ``un.fit``'s (adam(1e-2), full batch, standard errors);
3. ``warm_s``: a second ``un.fit`` of the same model object with another key (where it takes
   at most 1 s, three more follow, keys 4-6, and ``warm_median_s`` is the median of the
   four; else it is ``warm_s``);
4. ``plain_s``: the same fit written as plain JAX: the objective written out again (no unnorm
   code), the same number of ``optax.adam(1e-2)`` steps as the unnorm fit took
   (``len(fit.loss)``) in one jitted ``lax.scan``, and the same extra work where unnorm does
   it: Newton steps to convergence on the full-data objective and the sandwich standard
   errors (Hessian and per-observation gradients), and for the chain-based estimators the
   same MCMC kernel (MALA with the same step size and control, NumPyro's NUTS, a
   chromatic Gibbs sweep of the chain's two colours), the same chains and steps per
   optimizer step, and a final
   sampling of the fitted model with the chains, warmup, draws and thinning of ``fit.chains``
   followed by the likelihood's sandwich (CD, PCD) or Monte Carlo MLE Newton steps (MLE;
   as many samplings, each with as many draws, as the paired warm unnorm fit made: its
   ``samplings``). Timed warm: one call compiles, the next ones (as many as the warm unnorm
   calls, each paired with one) are timed, ``plain_s`` is their median. ``plain_loop_s`` is
   the optimizer loop alone; ``plain_compile_s`` the first call's extra time.

``ratio`` = ``warm_median_s / plain_s``: unnorm's overhead over the hand-written fit (1 = none).
``max_err_se`` = max over parameters of |estimate - truth| / standard error (unnorm's
estimate and SE), and ``plain_max_err_se`` the plain estimate's error in the same SEs: a fast
but wrong fit shows there. What the plain fit leaves out is listed per row in ``not_in_plain``
(ArviZ InferenceData of ``fit.chains``, MLE's Monte Carlo covariance, the interval grid of
``fit.conf_int``, argument checks).

Targets (2 CPU cores): cold ≤ 10 s, warm ≤ 2 s, warm ≤ 1.5 × plain.

Results go to ``benchmarks/results/fits.json`` (``--out`` to change). Speed is measured here
and never asserted in the tests.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/machine.py: this script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "fits.json"

#: (model, estimator) rows, in the order they run
CASES = (
    "gaussian:sm", "gaussian:dsm", "gaussian:ssm", "gaussian:nce", "gaussian:ksd",
    "gaussian:mle-mala", "gaussian:mle-nuts", "gaussian:cd", "gaussian:pcd",
    "ising:pl", "ising:rm", "ising:mpf", "ising:cd", "ising:pcd", "ising:mle",
)
TARGETS = {"cold_s": 10.0, "warm_s": 2.0, "ratio": 1.5}

FULL = {"n": 3000, "seed": 0, "fit_keys": [1, 2, 4, 5, 6], "plain_key": 3,
        # warm calls after the first: only while one takes at most this long
        "repeat_below_s": 1.0,
        "gaussian_mean": [1.0, -0.5], "gaussian_precision": [[2.0, 0.6], [0.6, 1.0]],
        "ising_spins": 10, "ising_coupling": 0.4, "ising_field": 0.2,
        # None: the estimators' defaults
        "num_steps": None, "mle_num_samples": None, "mle_num_warmup": None}
QUICK = {**FULL, "n": 400, "num_steps": 200, "mle_num_samples": 300, "mle_num_warmup": 100}

MAX_NEWTON = 50


# =============================================================================================
# the worker: one row in a fresh process


def make_data(model_name: str, cfg: dict):
    import jax
    import numpy as np

    rng = np.random.default_rng(cfg["seed"])
    if model_name == "gaussian":
        mean = np.asarray(cfg["gaussian_mean"])
        prec = np.asarray(cfg["gaussian_precision"])
        x = rng.multivariate_normal(mean, np.linalg.inv(prec), size=cfg["n"])
        return x.astype(np.float32), {"mu": mean, "prec": prec}
    import unnorm as un

    truth = un.models.ising_chain(cfg["ising_spins"], coupling=cfg["ising_coupling"],
                                  field=cfg["ising_field"])
    configs = np.asarray(truth.support.enumerate())
    energies = np.asarray(jax.vmap(lambda x: truth.energy(truth.params, x))(configs), float)
    p = np.exp(-(energies - energies.min()))
    rows = rng.choice(len(configs), size=cfg["n"], p=p / p.sum())
    return configs[rows].astype(np.float32), {"coupling": np.asarray(cfg["ising_coupling"]),
                                              "field": np.asarray(cfg["ising_field"])}


def make_model(model_name: str, cfg: dict):
    import unnorm as un

    if model_name == "gaussian":
        return un.models.gaussian(2)
    return un.models.ising_chain(cfg["ising_spins"], coupling=0.0, field=0.0)


def make_estimator(name: str, cfg: dict):
    import unnorm as un

    est = un.estimators
    mle_options = {k: cfg[f"mle_{k}"] for k in ("num_samples", "num_warmup")
                   if cfg[f"mle_{k}"] is not None}
    return {"sm": est.SM(), "dsm": est.DSM(), "ssm": est.SSM(), "nce": est.NCE(),
            "ksd": est.KSD(), "cd": est.CD(), "pcd": est.PCD(), "pl": est.PseudoLikelihood(),
            "rm": est.RatioMatching(), "mpf": est.MPF(),
            "mle": est.MLE(**mle_options),
            "mle-mala": est.MLE(sampler="mala", **mle_options),
            "mle-nuts": est.MLE(sampler="nuts", **mle_options)}[name]


def max_error(params: dict, truth: dict, stderr: dict | None) -> float | None:
    """max |estimate - truth| / SE over the parameters (the upper triangle of a symmetric
    matrix); None without standard errors."""
    import numpy as np

    if stderr is None:
        return None
    worst = 0.0
    for name, value in truth.items():
        est, se, value = (np.asarray(a, float) for a in (params[name], stderr[name], value))
        if est.ndim == 2:
            rows, cols = np.triu_indices(est.shape[0])
            est, se, value = est[rows, cols], se[rows, cols], value[rows, cols]
        worst = max(worst, float(np.max(np.abs(est - value) / se)))
    return worst


def compile_breakdown(events: list[tuple[str, float]], total_s: float) -> dict:
    """Seconds of tracing, lowering and XLA compilation within a fit of ``total_s`` seconds,
    the number of programs compiled, and the remainder (dispatch, host work, arithmetic)."""
    def total(suffix):
        return float(sum(secs for name, secs in events if name.endswith(suffix)))

    compiles = [secs for name, secs in events if name.endswith("backend_compile_duration")]
    trace_s = total("jaxpr_trace_duration")
    lower_s = total("jaxpr_to_mlir_module_duration")
    compile_s = float(sum(compiles))
    return {"programs_compiled": len(compiles), "trace_s": trace_s, "lower_s": lower_s,
            "xla_compile_s": compile_s,
            "rest_s": total_s - trace_s - lower_s - compile_s}


def worker(case: str, cfg: dict) -> dict:
    start = time.perf_counter()
    import jax
    import numpy as np
    jax_import_s = time.perf_counter() - start
    start = time.perf_counter()
    import unnorm as un
    # the package imports its public names on first use: load the ones a fit needs
    un.fit, un.models, un.estimators  # noqa: B018
    import_s = time.perf_counter() - start

    model_name, est_name = case.split(":")
    data, truth = make_data(model_name, cfg)
    model = make_model(model_name, cfg)
    estimator = make_estimator(est_name, cfg)
    options = {} if cfg["num_steps"] is None else {"num_steps": cfg["num_steps"]}

    # where the time goes: JAX reports the duration of every tracing, lowering to MLIR and
    # XLA compilation; the rest of a fit is dispatch and arithmetic
    compile_events: list[tuple[str, float]] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **_: compile_events.append((name, secs))
        if name.startswith("/jax/core/compile/") else None)

    # the draws per chain of every sampling of the fitted model, per fit: MLE samples again
    # with more draws while the Monte Carlo error is a large part of the total, as many
    # times as each key's draws need, and the plain fit mirrors those samplings
    samplings: list[list[int]] = []
    if est_name.startswith("mle"):
        record_samplings(samplings)

    fits, seconds, breakdown = [], [], []
    for i, key in enumerate(cfg["fit_keys"]):
        if i >= 2 and seconds[1] > cfg["repeat_below_s"]:
            break       # more warm calls only where one is short (noisy)
        compile_events.clear()
        if est_name.startswith("mle"):
            samplings.append([])
        start = time.perf_counter()
        fit = un.fit(model, data, estimator, key=jax.random.key(key), progress_bar=False,
                     **options)
        seconds.append(time.perf_counter() - start)
        fits.append(fit)
        breakdown.append(compile_breakdown(compile_events, seconds[-1]))
    fit = fits[0]
    warm = seconds[1:]
    row = {
        "case": case, "model": model_name, "estimator": est_name,
        "jax_import_s": jax_import_s, "import_s": import_s,
        "cold_s": seconds[0], "warm_s": seconds[1], "warm_all_s": warm,
        "warm_median_s": float(np.median(warm)),
        "cold_wall_time": fit.wall_time, "warm_wall_time": fits[1].wall_time,
        "method": fit.method, "stages": list(fit.stages), "steps": int(len(fit.loss)),
        "converged": bool(fit.converged),
        "chains": None if fit.chains is None else {
            k: int(v) for k, v in fit.chains.posterior["x"].sizes.items()},
        "estimate": {k: np.asarray(v).tolist() for k, v in fit.params.items()},
        "stderr": None if fit.stderr is None else {
            k: np.asarray(v).tolist() for k, v in fit.stderr.items()},
        "truth": {k: np.asarray(v).tolist() for k, v in truth.items()},
        "max_err_se": max_error(fit.params, truth, fit.stderr),
        "warm_max_err_se": max_error(fits[1].params, truth, fits[1].stderr),
        "cold_breakdown": breakdown[0], "warm_breakdown": breakdown[1],
    }
    plain = PlainFit(model_name, est_name, estimator, fit, data, cfg)
    key = jax.random.key(cfg["plain_key"])
    # each timed plain call samples as the warm unnorm call it is paired with did
    rounds = [tuple(s) or None for s in samplings[1:]] if samplings else [None] * len(warm)
    row["samplings"] = samplings or None
    start = time.perf_counter()
    plain.run(key, tuple(sorted({n for r in rounds if r for n in r})) or None)
    first = time.perf_counter() - start
    plain_s, loops = [], []
    for paired in rounds:      # as many timed calls as warm unnorm calls
        start = time.perf_counter()
        params, stderr, loop_s = plain.run(key, paired)
        plain_s.append(time.perf_counter() - start)
        loops.append(loop_s)
    row["plain_all_s"] = plain_s
    row["plain_s"] = float(np.median(plain_s))
    row["plain_loop_s"] = float(np.median(loops))
    row["plain_compile_s"] = first - plain_s[0]
    row["plain_estimate"] = {k: np.asarray(v).tolist() for k, v in params.items()}
    row["plain_stderr"] = None if stderr is None else {
        k: np.asarray(v).tolist() for k, v in stderr.items()}
    row["plain_max_err_se"] = max_error(params, truth, fit.stderr)
    row["plain_does"] = plain.describe()
    row["not_in_plain"] = plain.left_out()
    row["ratio"] = row["warm_median_s"] / row["plain_s"]
    return row


def record_samplings(samplings: list[list[int]]) -> None:
    """Append the draws per chain of every sampling of the fitted model by MLE (the first,
    and each round with more draws) to ``samplings[-1]``."""
    from unnorm.estimators import contrastive, mle

    original = contrastive.sample_model

    def counted(model, params, key, sampler, chains, num_warmup, num_samples, *rest, **kw):
        samplings[-1].append(int(num_samples))
        return original(model, params, key, sampler, chains, num_warmup, num_samples,
                        *rest, **kw)

    contrastive.sample_model = mle.sample_model = counted


# =============================================================================================
# the plain JAX fits


def gaussian_energy(theta, x):
    """``½ (x - μ)ᵀ Λ (x - μ)`` with ``Λ = L Lᵀ``, ``L`` lower triangular with an exp
    diagonal (the unconstrained coordinates unnorm optimizes, NumPyro's positive-definite
    bijection)."""

    prec = gaussian_precision(theta["chol"], x.shape[0])
    centred = x - theta["mu"]
    return 0.5 * centred @ prec @ centred


def gaussian_precision(chol, d: int):
    import jax.numpy as jnp
    import numpy as np

    rows, cols = np.tril_indices(d)
    lower = jnp.zeros((d, d), chol.dtype).at[rows, cols].set(chol)
    lower = jnp.where(np.eye(d, dtype=bool), jnp.exp(lower), lower)
    return lower @ lower.T


def ising_energy(theta, x):
    import jax.numpy as jnp

    return -theta["coupling"] * jnp.sum(x[:-1] * x[1:]) - theta["field"] * jnp.sum(x)


def sandwich(hessian, grads):
    """``H⁻¹ J H⁻¹ / n`` with ``J`` the covariance of the per-observation gradients (NumPy)."""
    import numpy as np

    grads = np.asarray(grads, float)
    h_inv = np.linalg.pinv(np.asarray(hessian, float))
    j = np.cov(grads.T, ddof=0).reshape(grads.shape[1], grads.shape[1])
    return h_inv @ j @ h_inv / grads.shape[0]


def newton_while(value_fn, flat):
    """Damped Newton steps on ``value_fn`` (Hessian eigenvalues by their absolute values, the
    step halved until the value does not rise)
    until the step is below 1e-5 (relative) or ``MAX_NEWTON`` steps, inside jit."""
    import jax
    import jax.numpy as jnp

    def cond(carry):
        _, size, i = carry
        return (size > 1e-5) & (i < MAX_NEWTON)

    def body(carry):
        flat, _, i = carry
        value, grad = jax.value_and_grad(value_fn)(flat)
        hess = jax.hessian(value_fn)(flat)
        # |eigenvalues| of the Hessian: a descent direction where it is not yet positive
        # definite (the optimizer's point can be far from the minimum)
        w, v = jnp.linalg.eigh(0.5 * (hess + hess.T))
        w = jnp.maximum(jnp.abs(w), 1e-6 * jnp.max(jnp.abs(w)))
        step = v @ ((v.T @ grad) / w)
        step = jnp.where(jnp.all(jnp.isfinite(step)), step, 0.0)

        def worse(t):
            new = value_fn(flat - t * step)
            return (t > 1e-3) & ~(new <= value + 1e-7 * jnp.abs(value))

        t = jax.lax.while_loop(worse, lambda t: 0.5 * t, jnp.asarray(1.0, flat.dtype))
        step = t * step
        size = jnp.max(jnp.abs(step)) / (1.0 + jnp.max(jnp.abs(flat)))
        return flat - step, size, i + 1

    flat, _, _ = jax.lax.while_loop(cond, body, (flat, jnp.asarray(jnp.inf, flat.dtype), 0))
    return flat


class PlainFit:
    """The fit of one row written as plain JAX: ``run(key)`` returns ``(params, stderr,
    loop_seconds)`` with params and standard errors in the model's (constrained) coordinates."""

    def __init__(self, model_name, est_name, estimator, fit, data, cfg):
        import jax.numpy as jnp
        import numpy as np

        self.model_name, self.est_name = model_name, est_name
        self.estimator, self.fit, self.cfg = estimator, fit, cfg
        self.data = jnp.asarray(data)
        self.steps = int(len(fit.loss))
        self.energy = gaussian_energy if model_name == "gaussian" else ising_energy
        if model_name == "gaussian":
            d = data.shape[1]
            self.theta0 = {"mu": jnp.zeros(d), "chol": jnp.zeros(d * (d + 1) // 2)}
        else:
            self.theta0 = {"coupling": jnp.zeros(()), "field": jnp.zeros(())}
        self.chain_based = est_name in ("cd", "pcd", "mle", "mle-mala", "mle-nuts")
        self.sampler = self.chain_sampler = None
        if self.chain_based:
            # the sampling of the fitted model, and the chains inside the optimizer loop (MLE
            # runs MALA there whatever its sampler, as unnorm's MLE does by default)
            self.sampler = ("gibbs" if model_name == "ising" else
                            "nuts" if est_name == "mle-nuts" else "mala")
            self.chain_sampler = "gibbs" if model_name == "ising" else "mala"
            sizes = fit.chains.posterior["x"].sizes
            self.post_chains, self.post_draws = int(sizes["chain"]), int(sizes["draw"])
            self.post_warmup = int(getattr(estimator, "num_warmup", 500))
            from unnorm.samplers.registry import check_sampler  # the thinning un.sample uses

            self.thinning = int(check_sampler(self.sampler, self._unnorm_model()).thinning)
        self._train = self._finish = None
        self.np = np

    def _unnorm_model(self):
        return make_model(self.model_name, self.cfg)

    def describe(self) -> str:
        parts = [f"{self.steps} adam(1e-2) steps in one jitted scan"]
        if self.est_name in ("sm", "dsm", "ssm", "nce", "rm", "ksd", "pl", "mpf"):
            parts.append("Newton to convergence on the full-data objective, Hessian and "
                         "sandwich")
        if self.chain_based:
            parts.append(f"{self.chain_sampler} chains; final sampling ({self.sampler}) "
                         f"{self.post_chains} chains × "
                         f"({self.post_warmup} warmup + {self.post_draws} × thinning "
                         f"{self.thinning}) steps")
            parts.append("Monte Carlo MLE Newton + sandwich" if self.est_name.startswith("mle")
                         else "likelihood sandwich from the draws")
        return "; ".join(parts)

    def left_out(self) -> list[str]:
        out = ["argument and data checks", "interval grid of conf_int"]
        if self.chain_based:
            out.append("ArviZ InferenceData of fit.chains")
        if self.est_name.startswith("mle"):
            out.append("MLE's Monte Carlo covariance batch means (its samplings are "
                       "mirrored: each with the draws of the paired warm fit's, a Newton "
                       "solve after each)")
        return out

    # ---- the objectives --------------------------------------------------------------------

    def _loss_terms(self):
        """``(init_state(theta0, key, data) -> (theta0', state), terms(theta, state) -> (n,))``
        for the deterministic estimators; theta includes NCE's log Z."""
        import jax
        import jax.numpy as jnp

        energy, data = self.energy, self.data
        n, d = data.shape
        name = self.est_name

        def grad_x(theta, x):
            return jax.grad(energy, argnums=1)(theta, x)

        if name == "sm":
            def terms(theta, state):
                def one(x):
                    g = grad_x(theta, x)
                    return 0.5 * jnp.sum(g**2) - jnp.trace(
                        jax.hessian(energy, argnums=1)(theta, x))
                return jax.vmap(one)(data)
            return lambda theta, key: (theta, ()), terms
        if name == "dsm":
            sigma = float(self.estimator.sigma)

            def init(theta, key):
                return theta, jax.random.normal(key, data.shape, data.dtype)

            def terms(theta, z):
                def one(x, z):
                    residual = z / sigma - grad_x(theta, x + sigma * z)
                    c = (-2.0 / sigma * jnp.vdot(z, grad_x(theta, x))
                         + (jnp.sum(z**2) - d) / sigma**2)
                    return 0.5 * jnp.sum(residual**2) - 0.5 * c
                return jax.vmap(one)(data, z)
            return init, terms
        if name == "ssm":
            def init(theta, key):
                return theta, jax.random.normal(key, data.shape, data.dtype)

            def terms(theta, v):
                def one(x, v):
                    g, hv = jax.jvp(lambda y: grad_x(theta, y), (x,), (v,))
                    return 0.5 * jnp.sum(g**2) - jnp.vdot(v, hv)
                return jax.vmap(one)(data, v)
            return init, terms
        if name == "nce":
            def noise_log_prob(loc, tril, y):
                z = jax.scipy.linalg.solve_triangular(tril, y - loc, lower=True)
                return (-0.5 * jnp.sum(z**2) - jnp.sum(jnp.log(jnp.diag(tril)))
                        - 0.5 * d * jnp.log(2 * jnp.pi))

            def init(theta, key):
                loc = jnp.mean(data, axis=0)
                centred = data - loc
                cov = centred.T @ centred / (n - 1)
                ridge = 1e-3 * jnp.trace(cov) / d
                tril = jnp.linalg.cholesky(cov + ridge * jnp.eye(d))
                noise_key, z_key = jax.random.split(key)
                ys = loc + jax.random.normal(noise_key, data.shape) @ tril.T
                # log Z(θ₀) by importance sampling from the noise, as NCE starts
                y0 = loc + jax.random.normal(z_key, (1024, d)) @ tril.T
                log_w = jax.vmap(lambda y: -energy(theta, y) - noise_log_prob(loc, tril, y))(y0)
                log_z = jax.scipy.special.logsumexp(log_w) - jnp.log(1024.0)
                return {**theta, "log_z": log_z}, (loc, tril, ys)

            def terms(theta, state):
                loc, tril, ys = state

                def g(x):
                    return -energy(theta, x) - theta["log_z"] - noise_log_prob(loc, tril, x)

                return (jax.nn.softplus(-jax.vmap(g)(data))
                        + jax.nn.softplus(jax.vmap(g)(ys)))
            return init, terms
        if name in ("pl", "rm", "mpf"):
            per_site = {"pl": lambda gaps: jax.nn.softplus(-gaps),
                        "rm": lambda gaps: jax.nn.sigmoid(-gaps) ** 2,
                        "mpf": lambda gaps: jnp.exp(-0.5 * gaps)}[name]

            def terms(theta, state):
                def one(x):
                    flipped = jnp.where(jnp.eye(d, dtype=bool), -x[None, :], x[None, :])
                    gaps = jax.vmap(lambda y: energy(theta, y))(flipped) - energy(theta, x)
                    return jnp.sum(per_site(gaps))
                return jax.vmap(one)(data)
            return lambda theta, key: (theta, ()), terms
        raise KeyError(name)

    def _ksd(self):
        """KSD's U-statistic (IMQ kernel, median bandwidth) through precomputed kernel
        matrices: ``Û = [Σ φ_ij s_i·s_j - 4 Σ_i s_i·(c_i x_i - (Φ'x)_i) + T] / (n(n-1))``."""
        import jax
        import jax.numpy as jnp
        import numpy as np

        from unnorm.stein_kernels import median_bandwidth  # the same bandwidth rule

        data, energy = self.data, self.energy
        n, d = data.shape
        h = float(median_bandwidth(np.asarray(data)))

        def init(theta, key):
            x = data - jnp.mean(data, axis=0)
            q = jnp.maximum(jnp.sum(x**2, 1)[:, None] + jnp.sum(x**2, 1)[None, :]
                            - 2 * x @ x.T, 0.0)
            off = 1.0 - jnp.eye(n, dtype=x.dtype)
            base = 1.0 + q / h**2
            phi = base**-0.5 * off
            d1 = -0.5 / h**2 * base**-1.5 * off           # f'(q)
            d2 = 0.75 / h**4 * base**-2.5 * off           # f''(q)
            trace = jnp.sum(-2.0 * d * d1 - 4.0 * d2 * q)
            lin = jnp.sum(d1, 1)[:, None] * x - d1 @ x    # c_i x_i - (Φ'x)_i
            return theta, (x, phi, d1, lin, trace)

        def scores(theta):
            return -jax.vmap(lambda x: jax.grad(energy, argnums=1)(theta, x))(data)

        def value(theta, state):
            x, phi, d1, lin, trace = state
            s = scores(theta)
            return (jnp.sum(s * (phi @ s)) - 4.0 * jnp.sum(s * lin) + trace) / (n * (n - 1))

        def row_means(theta, state):
            x, phi, d1, lin, trace = state
            s = scores(theta)
            q = jnp.maximum(jnp.sum(x**2, 1)[:, None] + jnp.sum(x**2, 1)[None, :]
                            - 2 * x @ x.T, 0.0)
            d2 = 0.75 / h**4 * (1.0 + q / h**2) ** -2.5 * (1.0 - jnp.eye(n, dtype=x.dtype))
            tr_rows = jnp.sum(-2.0 * d * d1 - 4.0 * d2 * q, 1)
            sx = jnp.sum(s * x, 1)
            rows = (jnp.sum(s * (phi @ s), 1) - 2.0 * jnp.sum(s * lin, 1)
                    + 2.0 * (jnp.sum(x * (d1 @ s), 1) - d1 @ sx) + tr_rows)
            return rows / (n - 1)

        return init, value, row_means

    # ---- the MCMC kernels ------------------------------------------------------------------

    def _kernel(self):
        """``(init(theta, positions, key) -> state, step(theta, state, key) -> (state,
        acceptance), position(state), set_step(state, factor))`` for the row's chain sampler,
        the chains vmapped."""
        import jax
        import jax.numpy as jnp

        energy = self.energy
        if self.chain_sampler == "gibbs":
            def step_one(theta, x, key):
                # the chromatic sweep of the nearest-neighbour chain, as unnorm colours it:
                # the odd sites, then the even ones, each colour at once; the energy is
                # multilinear, so E(x) - E(x with x_i flipped) = 2 x_i ∂E/∂x_i
                d = x.shape[0]
                log_u = jnp.log(jax.random.uniform(key, (d,)))
                for parity in (1, 0):
                    delta = 2.0 * x * jax.grad(energy, argnums=1)(theta, x)
                    flip = (jnp.arange(d) % 2 == parity) & (log_u < -jax.nn.softplus(-delta))
                    x = jnp.where(flip, -x, x)
                return x

            def init(theta, positions, key):
                return positions

            def step(theta, xs, key):
                keys = jax.random.split(key, xs.shape[0])
                return jax.vmap(lambda x, k: step_one(theta, x, k))(xs, keys), jnp.ones(())

            return init, step, lambda s: s, lambda s, f: s

        if self.chain_sampler == "mala":
            def logp_and_grad(theta, x):
                return jax.value_and_grad(lambda y: -energy(theta, y))(x)

            def step_one(theta, x, lp, g, eps, key):
                noise_key, u_key = jax.random.split(key)
                z = jax.random.normal(noise_key, x.shape)
                y = x + 0.5 * eps**2 * g + eps * z
                lp_y, g_y = logp_and_grad(theta, y)
                fwd = -0.5 * jnp.sum((y - x - 0.5 * eps**2 * g) ** 2) / eps**2
                bwd = -0.5 * jnp.sum((x - y - 0.5 * eps**2 * g_y) ** 2) / eps**2
                log_ratio = lp_y - lp + bwd - fwd
                acc = jnp.where(jnp.isfinite(log_ratio),
                                jnp.exp(jnp.minimum(log_ratio, 0.0)), 0.0)
                ok = jnp.isfinite(log_ratio) & (jnp.log(jax.random.uniform(u_key)) < log_ratio)
                return (jnp.where(ok, y, x), jnp.where(ok, lp_y, lp), jnp.where(ok, g_y, g),
                        acc)

            def refresh(theta, xs, eps):
                lp, g = jax.vmap(lambda x: logp_and_grad(theta, x))(xs)
                return xs, lp, g, eps

            def init(theta, positions, key):
                return refresh(theta, positions, jnp.full(positions.shape[0], 0.1))

            def step(theta, state, key):
                xs, lp, g, eps = refresh(theta, state[0], state[3])   # θ moved
                keys = jax.random.split(key, xs.shape[0])
                xs, lp, g, acc = jax.vmap(lambda x, l, gr, e, k: step_one(theta, x, l, gr, e, k))(
                    xs, lp, g, eps, keys)
                return (xs, lp, g, eps), acc

            def set_step(state, factor):
                return state[:3] + (state[3] * factor,)

            self._mala = (logp_and_grad, step_one)
            return init, step, lambda s: s[0], set_step

        # NUTS: NumPyro's functional kernel, as unnorm's sampler wraps it
        from numpyro.infer.hmc import hmc

        def potential_gen(theta):
            return lambda u: energy(theta, u)

        init_kernel, sample_kernel = hmc(potential_fn_gen=potential_gen, algo="NUTS")

        def init(theta, positions, key, num_warmup=100):
            keys = jax.random.split(key, positions.shape[0])
            return jax.vmap(lambda p, k: init_kernel(
                p, num_warmup, step_size=1.0, target_accept_prob=0.8, max_tree_depth=10,
                model_args=(theta,), rng_key=k))(positions, keys)

        def step(theta, states, key):
            def one(state, k):
                pe, grad = jax.value_and_grad(lambda u: energy(theta, u))(state.z)
                state = state._replace(potential_energy=pe, z_grad=grad, rng_key=k)
                state = sample_kernel(state, model_args=(theta,))
                return state, state.accept_prob

            keys = jax.random.split(key, jax.tree_util.tree_leaves(states)[0].shape[0])
            return jax.vmap(one)(states, keys)

        self._nuts_init = init
        return init, step, lambda s: s.z, lambda s, f: s

    # ---- the runs --------------------------------------------------------------------------

    def _build(self):
        import jax
        import jax.numpy as jnp
        import optax
        from jax.flatten_util import ravel_pytree

        optimizer = optax.adam(1e-2)
        steps = self.steps

        if self.chain_based:
            return self._build_chains(optimizer)

        if self.est_name == "ksd":
            init, value, row_means = self._ksd()
        else:
            init, terms = self._loss_terms()

            def value(theta, state):
                return jnp.mean(terms(theta, state))

        @jax.jit
        def train(key):
            theta, state = init(self.theta0, key)

            def one(carry, _):
                theta, opt = carry
                loss, grads = jax.value_and_grad(value)(theta, state)
                updates, opt = optimizer.update(grads, opt, theta)
                return (optax.apply_updates(theta, updates), opt), loss

            (theta, _), losses = jax.lax.scan(one, (theta, optimizer.init(theta)), None,
                                              length=steps)
            return theta, state, losses

        @jax.jit
        def finish(theta, state):
            flat, unravel = ravel_pytree(theta)
            flat = newton_while(lambda f: value(unravel(f), state), flat)
            hessian = jax.hessian(lambda f: value(unravel(f), state))(flat)
            if self.est_name == "ksd":
                grads = 2.0 * jax.jacfwd(lambda f: row_means(unravel(f), state))(flat)
            else:
                grads = jax.jacfwd(lambda f: terms(unravel(f), state))(flat)
            jac = jax.jacfwd(lambda f: self._constrained_flat(unravel(f)))(flat)
            return unravel(flat), hessian, grads, jac

        self._train, self._finish = train, finish

    def _constrained_flat(self, theta):
        import jax.numpy as jnp

        if self.model_name == "gaussian":
            prec = gaussian_precision(theta["chol"], theta["mu"].shape[0])
            return jnp.concatenate([theta["mu"], prec.ravel()])
        return jnp.stack([theta["coupling"], theta["field"]])

    def _constrained(self, theta, cov_flat=None):
        np = self.np
        flat = np.asarray(self._constrained_flat(theta))
        se = None if cov_flat is None else np.sqrt(np.clip(np.diag(cov_flat), 0, None))
        if self.model_name == "gaussian":
            d = theta["mu"].shape[0]
            params = {"mu": flat[:d], "prec": flat[d:].reshape(d, d)}
            stderr = None if se is None else {"mu": se[:d], "prec": se[d:].reshape(d, d)}
        else:
            params = {"coupling": flat[0], "field": flat[1]}
            stderr = None if se is None else {"coupling": se[0], "field": se[1]}
        return params, stderr

    def _build_chains(self, optimizer):
        import jax
        import jax.numpy as jnp
        import optax
        from jax.flatten_util import ravel_pytree

        steps, data, energy, est = self.steps, self.data, self.energy, self.estimator
        n, d = data.shape
        init, kstep, position, set_step = self._kernel()
        k = int(est.k)
        persistent = self.est_name != "cd"
        num_chains = int(getattr(est, "num_chains", 0))
        discrete = self.model_name == "ising"

        def starts(key, num):
            if discrete:
                return jnp.where(jax.random.bernoulli(key, 0.5, (num, d)), 1.0, -1.0)
            return jax.random.uniform(key, (num, d), minval=-2.0, maxval=2.0)

        def run_k(theta, state, key):
            accs = []
            for i in range(k):
                state, acc = kstep(theta, state, jax.random.fold_in(key, i))
                accs.append(jnp.mean(acc))
            return state, jnp.mean(jnp.stack(accs))

        @jax.jit
        def train(key):
            theta = self.theta0
            init_key, loop_key = jax.random.split(key)
            chains = init(theta, starts(init_key, num_chains), init_key) if persistent else ()

            def one(carry, i):
                theta, opt, chains, avg, count = carry
                step_key = jax.random.fold_in(loop_key, i)
                if persistent:
                    states, acc = run_k(theta, chains, step_key)
                    if self.chain_sampler == "mala":
                        states = set_step(states, jnp.exp(0.1 * (acc - 0.574)))
                else:
                    states, acc = run_k(theta, init(theta, data, step_key), step_key)
                ys = jax.lax.stop_gradient(position(states))

                def surrogate(t):
                    return (jnp.mean(jax.vmap(lambda x: energy(t, x))(data))
                            - jnp.mean(jax.vmap(lambda y: energy(t, y))(ys)))

                loss, grads = jax.value_and_grad(surrogate)(theta)
                updates, opt = optimizer.update(grads, opt, theta)
                theta = optax.apply_updates(theta, updates)
                # Polyak averaging of the second half of the iterates
                counted = 2 * i >= steps
                count = count + counted
                w = jnp.where(counted, 1.0 / jnp.maximum(count, 1), 0.0)
                avg = jax.tree_util.tree_map(lambda a, t: a + w * (t - a), avg, theta)
                return (theta, opt, states if persistent else chains, avg, count), loss

            carry = (theta, optimizer.init(theta), chains, theta, jnp.zeros((), jnp.int32))
            (theta, _, chains, avg, _), losses = jax.lax.scan(one, carry, jnp.arange(steps))
            return avg, chains, losses

        chains_n, warmup, draws, thin = (self.post_chains, self.post_warmup, self.post_draws,
                                         self.thinning)
        mle = self.est_name.startswith("mle")

        @functools.partial(jax.jit, static_argnames="draws")
        def finish(theta, chains, key, draws=draws):
            sample_key, start_key = jax.random.split(key)
            if persistent:
                begin = position(chains)[:chains_n]
            else:
                begin = starts(start_key, chains_n)
            draws_x = self._sample(theta, begin, sample_key, warmup, draws, thin)
            flat, unravel = ravel_pytree(theta)
            ref = jax.vmap(lambda y: energy(theta, y))(draws_x)

            def nll(f):
                t = unravel(f)
                lw = ref - jax.vmap(lambda y: energy(t, y))(draws_x)
                return (jnp.mean(jax.vmap(lambda x: energy(t, x))(data))
                        + jax.scipy.special.logsumexp(lw) - jnp.log(lw.shape[0]))

            if mle:
                flat = newton_while(nll, flat)
            hessian = jax.hessian(nll)(flat)
            t = unravel(flat)
            lw = ref - jax.vmap(lambda y: energy(t, y))(draws_x)
            weights = jax.nn.softmax(lw)
            grad_e = jax.vmap(jax.grad(lambda f, x: energy(unravel(f), x)), (None, 0))
            grads = grad_e(flat, data) - weights @ grad_e(flat, draws_x)
            jac = jax.jacfwd(lambda f: self._constrained_flat(unravel(f)))(flat)
            return t, hessian, grads, jac

        self._train, self._finish = train, finish

    def _sample(self, theta, begin, key, warmup, draws, thin):
        """``draws`` kept draws (every ``thin``-th step after ``warmup`` adapting steps) of
        each chain started at ``begin``, flattened to (chains × draws, d)."""
        import jax
        import jax.numpy as jnp

        energy = self.energy
        if self.sampler == "gibbs":
            _, kstep, _, _ = self._kernel()

            def body(x, i):
                return kstep(theta, x, jax.random.fold_in(key, i))[0], None

            xs, _ = jax.lax.scan(body, begin, jnp.arange(warmup))

            def keep(x, i):
                x, _ = jax.lax.scan(body, x, warmup + i * thin + jnp.arange(thin))
                return x, x

            _, kept = jax.lax.scan(keep, xs, jnp.arange(draws))
            return kept.reshape(-1, begin.shape[1])
        if self.sampler == "mala":
            from numpyro.infer.hmc_util import dual_averaging

            logp_and_grad, step_one = self._mala
            da_init, da_update = dual_averaging()
            lp, g = jax.vmap(lambda x: logp_and_grad(theta, x))(begin)
            eps = jnp.full(begin.shape[0], 0.1)
            da = jax.vmap(lambda e: da_init(jnp.log(10.0 * e)))(eps)

            def chain(x, lp, g, eps, da, key):
                def adapt(carry, i):
                    x, lp, g, eps, da = carry
                    x, lp, g, acc = step_one(theta, x, lp, g, eps, jax.random.fold_in(key, i))
                    da = da_update(0.574 - acc, da)
                    return (x, lp, g, jnp.exp(da[0]), da), None

                (x, lp, g, eps, da), _ = jax.lax.scan(adapt, (x, lp, g, eps, da),
                                                      jnp.arange(warmup))
                eps = jnp.exp(da[1])

                def keep(carry, i):
                    def one(c, j):
                        x, lp, g = c
                        x, lp, g, _ = step_one(theta, x, lp, g, eps, jax.random.fold_in(key, j))
                        return (x, lp, g), None
                    carry, _ = jax.lax.scan(one, carry, warmup + i * thin + jnp.arange(thin))
                    return carry, carry[0]

                _, kept = jax.lax.scan(keep, (x, lp, g), jnp.arange(draws))
                return kept

            keys = jax.random.split(key, begin.shape[0])
            kept = jax.vmap(chain)(begin, lp, g, eps, da, keys)
            return kept.reshape(-1, begin.shape[1])
        # NUTS: NumPyro's kernel adapts (step size, diagonal mass) in its first `warmup` steps
        from numpyro.infer.hmc import hmc

        init_kernel, sample_kernel = hmc(potential_fn_gen=lambda t: (
            lambda u: energy(t, u)), algo="NUTS")

        def chain(p, key):
            state = init_kernel(p, warmup, step_size=1.0, target_accept_prob=0.8,
                                max_tree_depth=10, model_args=(theta,), rng_key=key)

            def body(state, _):
                state = sample_kernel(state, model_args=(theta,))
                return state, state.z

            _, zs = jax.lax.scan(body, state, None, length=warmup + draws * thin)
            return zs[warmup::thin]

        keys = jax.random.split(key, begin.shape[0])
        return jax.vmap(chain)(begin, keys).reshape(-1, begin.shape[1])

    def run(self, key, samplings: tuple[int, ...] | None = None):
        """One plain fit; ``samplings``: the draws per chain of each sampling of the fitted
        model (chain-based fits; default one, with the unnorm fit's final number), each
        followed by MLE's Newton solve from the previous round's estimate."""
        import jax
        import numpy as np

        if self._train is None:
            self._build()
        train_key, finish_key = jax.random.split(key)
        start = time.perf_counter()
        theta, state, losses = jax.block_until_ready(self._train(train_key))
        loop_s = time.perf_counter() - start
        if self.chain_based:
            for i, draws in enumerate(samplings or (self.post_draws,)):
                theta, hessian, grads, jac = self._finish(
                    theta, state, jax.random.fold_in(finish_key, i), draws=draws)
        else:
            theta, hessian, grads, jac = self._finish(theta, state)
        cov_u = sandwich(hessian, grads)
        jac = np.asarray(jac, float)
        # NCE's log Z has a zero column in the Jacobian: the model's parameters only
        theta = {k: v for k, v in theta.items() if k != "log_z"}
        params, stderr = self._constrained(theta, jac @ cov_u @ jac.T)
        return params, stderr, loop_s


# =============================================================================================
# the driver: one subprocess per row


def run_row(case: str, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case,
               "--out", str(out)] + (["--quick"] if quick else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), "CI": "1"}
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env,
                              check=False)
        process_s = time.perf_counter() - start
        if done.returncode != 0 or not out.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
            return {"case": case, "error": "\n".join(tail), "process_s": process_s}
        row = json.loads(out.read_text())
        row["process_s"] = process_s
        row["warnings"] = [line for line in done.stderr.splitlines() if "Warning" in line]
        return row


def fmt(value, spec=".2f"):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec)


def print_table(rows: list[dict]) -> None:
    head = ("| estimator | model | import s | cold s | warm s | plain s (loop) | warm/plain | "
            "method | steps | max err/SE (plain) |")
    print()
    print(f"targets (2 cores): cold ≤ {TARGETS['cold_s']:g} s, warm ≤ {TARGETS['warm_s']:g} s, "
          f"warm/plain ≤ {TARGETS['ratio']:g}; '*' marks a miss")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | failed: {r['error'].splitlines()[-1]} |")
            continue

        def mark(key, r=r):
            return "*" if r[key] > TARGETS[key] else ""

        print(f"| {r['estimator']} | {r['model']} | {fmt(r['import_s'])} | "
              f"{fmt(r['cold_s'])}{mark('cold_s')} | {fmt(r['warm_s'])}{mark('warm_s')} | "
              f"{fmt(r['plain_s'])} ({fmt(r['plain_loop_s'])}) | {fmt(r['ratio'])}"
              f"{mark('ratio')} | {r['method']} | {r['steps']} | {fmt(r['max_err_se'])} "
              f"({fmt(r['plain_max_err_se'])}) |")
    print()
    print("where the cold and the warm fit spend their time (seconds; programs compiled):")
    head = ("| estimator | model | cold s | programs | trace | lower | XLA compile | rest | "
            "warm s | warm programs | warm rest |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        if "error" in r:
            continue
        c, w = r["cold_breakdown"], r["warm_breakdown"]
        print(f"| {r['estimator']} | {r['model']} | {fmt(r['cold_s'])} | "
              f"{c['programs_compiled']} | {fmt(c['trace_s'])} | {fmt(c['lower_s'])} | "
              f"{fmt(c['xla_compile_s'])} | {fmt(c['rest_s'])} | {fmt(r['warm_s'])} | "
              f"{w['programs_compiled']} | {fmt(w['rest_s'])} |")


def summarize(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    out = {"rows": len(rows), "failed": [r["case"] for r in rows if "error" in r]}
    for key in ("cold_s", "warm_s", "ratio"):
        out[f"meets_{key}"] = {r["case"]: r[key] <= TARGETS[key] for r in ok}
    ratios = [r["ratio"] for r in ok]
    out["geomean_ratio"] = (math.exp(sum(map(math.log, ratios)) / len(ratios))
                            if ratios else None)
    out["ratios"] = {r["case"]: r["ratio"] for r in ok}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--only", help="comma-separated rows, e.g. gaussian:sm,ising:pl "
                        "(a bare estimator name selects it on every model)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)

    if args.worker:
        row = worker(args.worker, cfg)
        args.out.write_text(json.dumps(row, indent=2) + "\n")
        return 0

    cases = list(CASES)
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        cases = [c for c in CASES if c in wanted or c.split(":")[1] in wanted]
        unknown = [w for w in wanted if w not in CASES
                   and w not in {c.split(":")[1] for c in CASES}]
        if unknown or not cases:
            parser.error(f"--only: unknown {unknown}; choose from {', '.join(CASES)}")
    out = args.out or DEFAULT_OUT

    env = machine.environment(("jax", "jaxlib", "optax", "numpy", "numpyro", "arviz", "unnorm"))
    env["load_average_start"] = os.getloadavg()
    started = time.perf_counter()
    rows = []
    for case in cases:
        print(f"{case} ...", flush=True)
        row = run_row(case, args.quick)
        if "error" in row:
            print(f"  failed:\n{row['error']}", flush=True)
        else:
            print(f"  cold {row['cold_s']:.2f} s, warm {row['warm_s']:.2f} s, plain "
                  f"{row['plain_s']:.2f} s, {row['method']}, {row['steps']} steps", flush=True)
        rows.append(row)
    env["load_average_end"] = os.getloadavg()
    env["total_seconds"] = round(time.perf_counter() - started, 1)
    summary = summarize(rows)
    print_table(rows)
    if summary["geomean_ratio"] is not None:
        print(f"\ngeometric mean warm/plain: {summary['geomean_ratio']:.2f}")
    result = {
        "command": " ".join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "config": cfg, "targets": TARGETS, "environment": env, "results": rows,
        "summary": summary,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}  ({env['total_seconds']:.0f} s; load average "
          f"{env['load_average_start'][0]:.1f} -> {env['load_average_end'][0]:.1f} "
          f"on {env['cpu_count']} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
