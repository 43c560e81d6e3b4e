"""Sampling speed of ``unnorm.sample`` against reference implementations.

Run from the repository root::

    python benchmarks/sampling.py            # full run (under 10 minutes on 2 CPU cores)
    python benchmarks/sampling.py --quick    # small sizes, a smoke test of the script
    python benchmarks/sampling.py --only mala,gibbs
    python benchmarks/sampling.py --only nuts,mala --first-seeds 5   # pooled first calls

Three comparisons, same machine and same run, fixed keys:

1. NUTS: ``un.sample(..., sampler="nuts")`` against NumPyro's own
   ``MCMC(NUTS(potential_fn=...), chain_method="vectorized")`` on 20-D and 100-D Gaussians with a
   dense covariance of condition number 100. Metric: bulk ESS of the slowest coordinate per
   second of wall time. A third entry drives the same NumPyro kernels (``numpyro.infer.hmc.hmc``)
   with a jitted ``vmap`` + ``lax.scan`` compiled once, because ``MCMC.run`` compiles its
   sampling loop again on every call.
2. MALA at a fixed step size ε: ``un.sample(..., sampler="mala", adapt_step_size=False,
   num_warmup=0)`` against ``blackjax.mala`` with τ = ε²/2 (BlackJAX writes the step as
   x + τ∇log p + √(2τ) z; unnorm as x + (ε²/2)∇log p + εz), chains vmapped in a jitted
   ``lax.scan``. The mean acceptance rates are printed to check that the step sizes agree.
3. Gibbs: sweeps per second of ``un.sample(..., sampler="gibbs")`` on a 100-spin Ising chain
   against a plain NumPy heat-bath sampler (vectorized over chains, a Python loop over the
   sites computing each site's local field). unnorm picks its blocked scan here (two colours);
   the row ``unnorm-sequential`` is the site-by-site scan (``scan="sequential"``).

"first" is a call in a fresh Python process (JAX compilation included, imports excluded);
"warm" re-uses compiled code: the same ``Model`` object (unnorm), the same ``MCMC`` object
(NumPyro) or the same jitted function (BlackJAX, NumPyro functional) called again with other
keys, after one untimed call. Warm rates pool the repeats: Σ ESS / Σ seconds.

Results go to ``benchmarks/results/sampling.json`` (``--out`` to change) and a table is
printed. Speed is measured here and never asserted in the tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import arviz as az
import jax
import machine  # benchmarks/machine.py: this script's folder is on sys.path
import numpy as np

import unnorm as un

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sampling.json"

NUM_CHAINS = 4
#: MALA step sizes ε (Song & Kingma 2021, eq. 6), chosen for a mean acceptance near 0.6.
MALA_STEP_SIZE = {20: 0.45, 100: 0.35}
ISING = {"n": 100, "coupling": 0.5, "field": 0.1}

FULL = {
    "nuts_dims": [20, 100], "nuts_warmup": 1000, "nuts_samples": 1000, "nuts_repeats": 3,
    "mala_dims": [20, 100], "mala_samples": 50_000, "mala_repeats": 5,
    "gibbs_chains": [16, 256], "gibbs_sweeps": {"16": 2000, "256": 400},
    "gibbs_numpy_sweeps": 300, "gibbs_repeats": 7,
}
QUICK = {
    "nuts_dims": [20], "nuts_warmup": 300, "nuts_samples": 300, "nuts_repeats": 1,
    "mala_dims": [20], "mala_samples": 5_000, "mala_repeats": 1,
    "gibbs_chains": [16], "gibbs_sweeps": {"16": 200},
    "gibbs_numpy_sweeps": 20, "gibbs_repeats": 1,
}

#: The reference each benchmark's ratios are taken against, and the rate compared.
REFERENCES = {
    "nuts": (["numpyro", "numpyro-functional"], "ess_per_s"),
    "mala": (["blackjax"], "ess_per_s"),
    "gibbs": (["numpy"], "sweeps_per_s"),
}


# ---------------------------------------------------------------------------------------------
# helpers


def gaussian_target(d: int, condition: float = 100.0, seed: int = 0):
    """A centred Gaussian with dense covariance ``Q diag(λ) Qᵀ``: ``Q`` a random rotation,
    λ log-spaced over [1/√c, √c], so the condition number is ``c``."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    q = q * np.sign(np.diag(r))  # Haar-distributed rotation
    half = 0.5 * np.log10(condition)
    lam = np.logspace(-half, half, d)
    precision = (q / lam) @ q.T
    model = un.models.gaussian(d, precision=0.5 * (precision + precision.T))
    return model, model.params


def min_bulk_ess(draws: np.ndarray) -> float:
    """Bulk ESS (ArviZ, rank-normalized) of the slowest coordinate of (chain, draw, d) draws."""
    ess = az.ess(az.convert_to_dataset({"x": np.asarray(draws)}), method="bulk")["x"].values
    return float(np.min(ess))


def timed(fn):
    """``fn()`` and its wall time, measured as ``timeit`` does: the garbage collector runs
    before the call and is off during it, for every implementation alike. A full collection
    walks every object of the process (JAX, NumPyro, ArviZ, ...): 100-140 ms here, at a moment
    set by whatever ran before, which is not the sampler's cost."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()


def initial_points(key, d: int) -> jax.Array:
    """Uniform(-2, 2) starting points, as unnorm draws them by default."""
    return jax.random.uniform(key, (NUM_CHAINS, d), minval=-2.0, maxval=2.0)


# ---------------------------------------------------------------------------------------------
# 1. NUTS: unnorm vs NumPyro
#
# Every implementation is a function seed -> dict with "seconds" and the measured quantities;
# only the sampling call (and the transfer of its draws to NumPy) is inside the timer.


def nuts_impls(d: int, cfg: dict) -> dict:
    from numpyro.infer import MCMC, NUTS
    from numpyro.infer.hmc import hmc

    model, params = gaussian_target(d)
    warmup, samples = cfg["nuts_warmup"], cfg["nuts_samples"]

    def ours(seed):
        idata, seconds = timed(lambda: un.sample(
            model, params, key=jax.random.key(seed), sampler="nuts", num_chains=NUM_CHAINS,
            num_warmup=warmup, num_samples=samples, progress_bar=False, warn=False))
        stats = idata.sample_stats
        return {"seconds": seconds, "ess_min": min_bulk_ess(idata.posterior["x"].values),
                "mean_n_steps": float(stats["n_steps"].mean()),
                "mean_step_size": float(stats["step_size"].mean())}

    potential = lambda x: model.energy(params, x)  # noqa: E731  same energy, params closed over
    mcmc = MCMC(NUTS(potential_fn=potential), num_warmup=warmup, num_samples=samples,
                num_chains=NUM_CHAINS, chain_method="vectorized", progress_bar=False)

    def numpyro(seed):
        def run():
            init = initial_points(jax.random.key(1000 + seed), d)
            mcmc.run(jax.random.key(seed), init_params=init,
                     extra_fields=("num_steps", "adapt_state.step_size"))
            return np.asarray(mcmc.get_samples(group_by_chain=True))

        draws, seconds = timed(run)
        extra = mcmc.get_extra_fields()
        return {"seconds": seconds, "ess_min": min_bulk_ess(draws),
                "mean_n_steps": float(np.mean(extra["num_steps"])),
                "mean_step_size": float(np.mean(extra["adapt_state.step_size"]))}

    # NumPyro's kernels in its functional form, one jitted vmap + scan: compiled once.
    init_kernel, sample_kernel = hmc(potential_fn=potential, algo="NUTS")

    @jax.jit
    def functional_run(key, positions):
        keys = jax.random.split(key, NUM_CHAINS)
        states = jax.vmap(lambda z, k: init_kernel(z, warmup, rng_key=k))(positions, keys)

        def one_step(states, _):
            states = jax.vmap(sample_kernel)(states)
            return states, (states.z, states.num_steps, states.adapt_state.step_size)

        _, (zs, n_steps, step) = jax.lax.scan(one_step, states, None, length=warmup + samples)
        return zs[warmup:], n_steps[warmup:], step[warmup:]

    def functional(seed):
        def run():
            out = functional_run(jax.random.key(seed),
                                 initial_points(jax.random.key(1000 + seed), d))
            return tuple(np.asarray(a) for a in out)

        (zs, n_steps, step), seconds = timed(run)
        return {"seconds": seconds, "ess_min": min_bulk_ess(np.swapaxes(zs, 0, 1)),
                "mean_n_steps": float(n_steps.mean()), "mean_step_size": float(step.mean())}

    return {"unnorm": ours, "numpyro": numpyro, "numpyro-functional": functional}


# ---------------------------------------------------------------------------------------------
# 2. MALA at a fixed step size: unnorm vs BlackJAX


def mala_impls(d: int, cfg: dict) -> dict:
    import blackjax

    model, params = gaussian_target(d)
    eps = MALA_STEP_SIZE[d]
    samples = cfg["mala_samples"]

    def ours(seed, defaults=False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", un.ConvergenceWarning)
            idata, seconds = timed(lambda: un.sample(
                model, params, key=jax.random.key(seed), sampler="mala", step_size=eps,
                adapt_step_size=False, num_chains=NUM_CHAINS, num_warmup=0, num_samples=samples,
                progress_bar=defaults, warn=defaults))
        return {"seconds": seconds, "ess_min": min_bulk_ess(idata.posterior["x"].values),
                "acceptance": float(idata.sample_stats["acceptance_rate"].mean()),
                "step_size": eps}

    logdensity = lambda x: -model.energy(params, x)  # noqa: E731
    kernel = blackjax.mala(logdensity, step_size=eps**2 / 2)

    @jax.jit
    def blackjax_run(key, positions):
        states = jax.vmap(kernel.init)(positions)

        def one_step(states, step_key):
            states, info = jax.vmap(kernel.step)(jax.random.split(step_key, NUM_CHAINS), states)
            return states, (states.position, info.acceptance_rate)

        _, (xs, accept) = jax.lax.scan(one_step, states, jax.random.split(key, samples))
        return xs, accept

    def reference(seed):
        def run():
            xs, accept = blackjax_run(jax.random.key(seed),
                                      initial_points(jax.random.key(1000 + seed), d))
            return np.asarray(xs), np.asarray(accept)

        (xs, accept), seconds = timed(run)
        return {"seconds": seconds, "ess_min": min_bulk_ess(np.swapaxes(xs, 0, 1)),
                "acceptance": float(accept.mean()), "step_size": eps}

    impls = {"unnorm": ours, "blackjax": reference}
    if d == 20:
        # un.sample's defaults: progress bar on (the run is cut into chunks: a differently
        # shaped scan, compiled once more) and the convergence check (R-hat, ESS) afterwards.
        impls["unnorm-defaults"] = lambda seed: ours(seed, defaults=True)
    return impls


# ---------------------------------------------------------------------------------------------
# 3. Gibbs on an Ising chain: unnorm vs plain NumPy


def numpy_ising_chain_gibbs(num_chains, num_sweeps, n, coupling, field, seed):
    """Systematic-scan heat-bath Gibbs for the open Ising chain, vectorized over chains.

    ``p(x_i = +1 | rest) = σ(2 f_i)`` with the local field ``f_i = J (x_{i-1} + x_{i+1}) + h``.
    ``x`` is stored site-major, so ``x[i]`` is contiguous over chains. Every sweep is kept, as
    ``un.sample`` keeps every draw."""
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-1.0, 1.0]), size=(n, num_chains))
    out = np.empty((num_sweeps, n, num_chains))
    for s in range(num_sweeps):
        u = rng.random((n, num_chains))
        for i in range(n):
            f = np.full(num_chains, field)
            if i > 0:
                f += coupling * x[i - 1]
            if i < n - 1:
                f += coupling * x[i + 1]
            x[i] = np.where(u[i] * (1.0 + np.exp(-2.0 * f)) < 1.0, 1.0, -1.0)
        out[s] = x
    return out


def exact_mean_spin(n, coupling, field):
    """E[x_i] averaged over sites for the open Ising chain: d log Z / dh / n, with log Z from
    transfer matrices."""
    def log_z(h):
        s = np.array([-1.0, 1.0])
        transfer, weight = np.exp(coupling * np.outer(s, s)), np.exp(h * s)
        v, log_scale = weight.copy(), 0.0
        for _ in range(n - 1):
            v = (v @ transfer) * weight
            log_scale += np.log(v.sum())
            v /= v.sum()
        return log_scale + np.log(v.sum())

    eps = 1e-5
    return (log_z(field + eps) - log_z(field - eps)) / (2 * eps) / n


def gibbs_impls(num_chains: int, cfg: dict) -> dict:
    n, coupling, field = ISING["n"], ISING["coupling"], ISING["field"]
    model = un.models.ising_chain(n, coupling=coupling, field=field)
    sweeps = cfg["gibbs_sweeps"][str(num_chains)]
    np_sweeps = cfg["gibbs_numpy_sweeps"]

    def ours(seed, scan="auto"):
        # scan="auto" picks the blocked (chromatic) scan here: two colours, multilinear energy.
        idata, seconds = timed(lambda: un.sample(
            model, model.params, key=jax.random.key(seed), sampler="gibbs",
            num_chains=num_chains, num_warmup=0, num_samples=sweeps, progress_bar=False,
            warn=False, scan=scan))
        x = idata.posterior["x"].values
        return {"seconds": seconds, "sweeps": sweeps,
                "mean_spin": float(x[:, sweeps // 10:].mean())}

    def reference(seed):
        out, seconds = timed(lambda: numpy_ising_chain_gibbs(num_chains, np_sweeps, n,
                                                             coupling, field, seed))
        return {"seconds": seconds, "sweeps": np_sweeps,
                "mean_spin": float(out[np_sweeps // 10:].mean())}

    return {"unnorm": ours, "numpy": reference,
            "unnorm-sequential": lambda seed: ours(seed, scan="sequential")}


BENCHMARKS = {"nuts": ("nuts_dims", nuts_impls), "mala": ("mala_dims", mala_impls),
              "gibbs": ("gibbs_chains", gibbs_impls)}
#: Implementations with nothing to compile: their "first" call is not measured apart.
NO_COMPILE = {"numpy"}
#: Diagnostic entries measured warm only (to keep the full run under 10 minutes).
WARM_ONLY = {"numpyro-functional", "unnorm-defaults", "unnorm-sequential"}


# ---------------------------------------------------------------------------------------------
# driver


def first_call_in_fresh_process(bench: str, size: int, impl: str, quick: bool,
                                 seed: int = 0) -> dict:
    """Time ``impl``'s first call in a new Python process, so that no compiled code and no
    JAX runtime state is shared with what ran before."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--first-call",
           f"{bench}:{size}:{impl}:{seed}"]
    if quick:
        cmd.append("--quick")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"first call of {bench}:{size}:{impl} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rates(bench: str, measured: dict) -> dict:
    if bench == "gibbs":
        return {"sweeps_per_s": measured["sweeps"] / measured["seconds"]}
    return {"ess_per_s": measured["ess_min"] / measured["seconds"]}


def run_benchmark(bench: str, size: int, cfg: dict, quick: bool, rows: list,
                  first_seeds: int = 1) -> None:
    size_key = "dim" if bench != "gibbs" else "chains"
    repeats = cfg[f"{bench}_repeats"]
    impls = BENCHMARKS[bench][1](size, cfg)
    base = {"benchmark": bench, size_key: size}
    if bench == "gibbs":
        base["exact_mean_spin"] = exact_mean_spin(ISING["n"], ISING["coupling"], ISING["field"])

    # First calls: one fresh process per implementation and seed, the seeds interleaved; with
    # several seeds the rate pools them (Σ ESS / Σ seconds), which averages out the noise of
    # the minimum-ESS estimate.
    compiled = [impl for impl in impls if impl not in NO_COMPILE and impl not in WARM_ONLY]
    firsts = {impl: [] for impl in compiled}
    for seed in range(first_seeds):
        for impl in compiled:
            firsts[impl].append(first_call_in_fresh_process(bench, size, impl, quick, seed))
    for impl, results in firsts.items():
        row = {**base, "impl": impl, "call": "first"}
        if len(results) == 1:
            rows.append({**row, **results[0], **rates(bench, results[0])})
            continue
        for field in results[0]:
            row[field] = float(np.mean([r[field] for r in results]))
        row["repeats"] = len(results)
        row["seconds_all"] = [r["seconds"] for r in results]
        total = {"seconds": sum(r["seconds"] for r in results)}
        if bench == "gibbs":
            total["sweeps"] = sum(r["sweeps"] for r in results)
        else:
            total["ess_min"] = sum(r["ess_min"] for r in results)
            row["ess_min_all"] = [r["ess_min"] for r in results]
        rows.append({**row, **rates(bench, total)})

    # Warm calls, interleaved so that the machine's load falls on every implementation alike.
    for impl, fn in impls.items():
        if impl not in NO_COMPILE:
            fn(0)  # compile (untimed)
    warm = {impl: [] for impl in impls}
    for seed in range(1, repeats + 1):
        for impl, fn in impls.items():
            warm[impl].append(fn(seed))
    for impl, results in warm.items():
        row = {**base, "impl": impl, "call": "warm", "repeats": repeats}
        for field in results[0]:
            row[field] = float(np.mean([r[field] for r in results]))
        row["seconds_min"] = float(min(r["seconds"] for r in results))
        total = {"seconds": sum(r["seconds"] for r in results)}
        if bench == "gibbs":
            total["sweeps"] = sum(r["sweeps"] for r in results)
        else:
            total["ess_min"] = sum(r["ess_min"] for r in results)
        rows.append({**row, **rates(bench, total)})


def ratios(rows: list) -> list[dict]:
    """unnorm / reference rates, per (benchmark, size, call). ``speed_ratio`` compares mean wall
    times of the same work; ``speed_ratio_best`` the fastest warm repeat of each, the figure
    least disturbed by other load on the machine. NumPy's Gibbs has nothing to compile, so
    both of unnorm's calls are compared with its one row."""
    out = []
    for bench, (references, metric) in REFERENCES.items():
        for theirs in rows:
            if theirs["benchmark"] != bench or theirs["impl"] not in references:
                continue
            size_key = "dim" if bench != "gibbs" else "chains"
            for ours in rows:
                if (ours["benchmark"] != bench or ours["impl"] != "unnorm"
                        or ours[size_key] != theirs[size_key]
                        or (bench != "gibbs" and ours["call"] != theirs["call"])):
                    continue
                entry = {"benchmark": bench, size_key: ours[size_key], "call": ours["call"],
                         "reference": theirs["impl"], "metric": metric,
                         "ratio": ours[metric] / theirs[metric]}
                if bench != "gibbs":
                    entry["speed_ratio"] = theirs["seconds"] / ours["seconds"]
                if "seconds_min" in ours and "seconds_min" in theirs:
                    # fastest repeat against fastest repeat: the least disturbed by other load
                    work = "sweeps" if bench == "gibbs" else None
                    scale = ours[work] / theirs[work] if work else 1.0
                    entry["speed_ratio_best"] = theirs["seconds_min"] / ours["seconds_min"] * scale
                out.append(entry)
    return out


def print_table(rows: list, ratio_rows: list) -> None:
    header = (f"{'benchmark':9} {'size':>6} {'impl':19} {'call':5} {'seconds':>8} {'ESS_min':>8} "
              f"{'rate':>11}  notes")
    print("\n" + header + "\n" + "-" * (len(header) + 30))
    for r in rows:
        size = f"d={r['dim']}" if "dim" in r else f"C={r['chains']}"
        if r["benchmark"] == "gibbs":
            rate, ess = f"{r['sweeps_per_s']:.1f} sw/s", ""
            notes = f"{r['sweeps']:.0f} sweeps, mean spin {r['mean_spin']:+.4f} " \
                    f"(exact {r['exact_mean_spin']:+.4f})"
        else:
            rate, ess = f"{r['ess_per_s']:.1f} /s", f"{r['ess_min']:.0f}"
            if "acceptance" in r:
                notes = f"accept {r['acceptance']:.3f}, eps {r['step_size']:.3g}"
            else:
                notes = f"n_steps {r['mean_n_steps']:.1f}, step {r['mean_step_size']:.3f}"
        print(f"{r['benchmark']:9} {size:>6} {r['impl']:19} {r['call']:5} {r['seconds']:8.2f} "
              f"{ess:>8} {rate:>11}  {notes}")
    print("\nratios unnorm / reference (> 1: unnorm faster); speed = same work, wall time")
    for q in ratio_rows:
        size = f"d={q['dim']}" if "dim" in q else f"C={q['chains']}"
        speed = f"   speed {q['speed_ratio']:.2f}" if "speed_ratio" in q else ""
        if "speed_ratio_best" in q:
            speed += f"   best-of-repeats speed {q['speed_ratio_best']:.2f}"
        print(f"  {q['benchmark']:6} {size:>6} {q['call']:5} vs {q['reference']:19} "
              f"{q['metric']:13} {q['ratio']:6.2f}{speed}")


def environment() -> dict:
    env = machine.environment(("jax", "jaxlib", "numpyro", "blackjax", "numpy", "arviz",
                               "xarray", "unnorm"))
    env["jax_devices"] = [str(dev) for dev in jax.devices()]
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--only", default="nuts,mala,gibbs",
                        help="comma-separated subset of nuts,mala,gibbs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--first-seeds", type=int, default=1,
                        help="fresh-process first calls per implementation, pooled (default 1)")
    parser.add_argument("--first-call", help=argparse.SUPPRESS)  # BENCH:SIZE:IMPL:SEED, internal
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL

    if args.first_call:
        bench, size, impl, seed = args.first_call.split(":")
        measured = BENCHMARKS[bench][1](int(size), cfg)[impl](int(seed))
        print(json.dumps(measured))
        return 0

    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from nuts, mala, gibbs")

    env = environment()
    env["load_average_start"] = os.getloadavg()
    started = time.perf_counter()
    rows: list[dict] = []
    for bench in BENCHMARKS:
        if bench not in chosen:
            continue
        for size in cfg[BENCHMARKS[bench][0]]:
            print(f"{bench} {size} ...", flush=True)
            run_benchmark(bench, size, cfg, args.quick, rows, args.first_seeds)
    env["load_average_end"] = os.getloadavg()
    env["total_seconds"] = round(time.perf_counter() - started, 1)

    ratio_rows = ratios(rows)
    print_table(rows, ratio_rows)
    result = {
        "command": " ".join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "config": cfg,
        "environment": env,
        "results": rows,
        "ratios": ratio_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}  ({env['total_seconds']:.0f} s; load average "
          f"{env['load_average_start'][0]:.1f} -> {env['load_average_end'][0]:.1f} "
          f"on {env['cpu_count']} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
