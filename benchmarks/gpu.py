"""Sampling and estimator speed of unnorm on whatever backend JAX runs on (GPU, TPU or CPU).

Run from the repository root::

    python benchmarks/gpu.py                   # full sizes, meant for an accelerator
    python benchmarks/gpu.py --quick           # tiny sizes: a smoke test of the script on a CPU
    python benchmarks/gpu.py --only mala,gibbs --out /tmp/gpu.json

Only the core dependencies are needed (no BlackJAX, no PyTorch). The script reuses the targets
and the reference losses of ``sampling.py`` and ``estimators.py`` and measures unnorm alone, on
``jax.default_backend()``, for several sizes:

* ``nuts``: ``un.sample(..., sampler="nuts")`` on the dense Gaussians of ``sampling.py``
  (condition number 100), several numbers of chains. Rate: bulk ESS of the slowest coordinate,
  over all chains, per second.
* ``mala``: ``un.sample(..., sampler="mala")`` at the fixed step sizes of ``sampling.py``, 1 to
  4096 chains. Rate as for NUTS. The warmup steps only burn in (no step-size adaptation).
* ``gibbs``: ``un.sample(..., sampler="gibbs")`` (blocked scan) on the 100-spin Ising chain of
  ``sampling.py``, 1 to 4096 chains. Rate: chain-sweeps per second (sweeps times chains).
* ``sm``, ``dsm``, ``ssm``, ``nce``: ``un.fit`` training the MLP energy of ``estimators.py``
  (two hidden layers of 128 SiLU units) with Adam, for several input dimensions ``d`` and batch
  sizes. Rate: optimizer steps per second.

Every row carries a correctness check of what the backend computed:

* NUTS and MALA: every coordinate's mean within 4 Monte Carlo standard errors (ArviZ's MCSE of
  the mean, which needs an ESS of some hundreds to be trusted; the sizes give that) of the
  truth, 0.
* Gibbs: the mean spin within 4 MCSE of the exact value (``sampling.exact_mean_spin``,
  transfer matrices), the MCSE from the chains of per-draw magnetizations.
* Estimators: the per-observation loss terms of ``un.fit``'s objective (the estimator bound to
  the model, noise keyed on the row) equal the hand-written JAX terms of ``estimators.py`` (SM,
  DSM, SSM) or of this script (NCE, Gutmann & Hyvärinen 2010) given the same noise, computed
  on the CPU, at the initial weights, on a batch of 64 rows, under float32 matrix products (a
  GPU's default TF32 products would round the two differently), and the trained loss is
  finite.

Timing: one untimed first call (it compiles; its wall time is recorded), then warm calls with
other keys; ``seconds`` is their median, and the rate is the last warm call's measured
quantity over its seconds. The draws' ESS and MCSE are computed outside the timer.

Results go to ``benchmarks/results/gpu-<backend>.json`` (``--out`` to change) and a table is
printed. Speed is measured here and never asserted in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import arviz as az
import estimators as estimator_bench  # benchmarks/estimators.py: this folder is on sys.path
import jax
import jax.numpy as jnp
import machine
import numpy as np
import numpyro.distributions as dist
import optax
import sampling as sampling_bench

import unnorm as un
from unnorm.estimators.base import Batch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SAMPLERS = ("nuts", "mala", "gibbs")
ESTIMATORS = ("sm", "dsm", "ssm", "nce")
#: |estimate - truth| / MCSE below this passes (DESIGN: a z-test at 4 standard errors).
Z_LIMIT = 4.0
#: relative difference of the estimator's loss terms from the reference's (float32 rounding)
LOSS_RTOL = 1e-4

#: a check needs this ESS behind its MCSE: ArviZ's MCSE of a few dozen effective draws is itself
#: too uncertain for a z-test
MIN_ESS = 100

FULL = {
    # Chains per dimension. Steps per chain: max(min_steps, total_steps // chains), so that the
    # ESS behind each check stays in the hundreds or more however few the chains (MALA's
    # slowest coordinate needs about 230 steps per effective draw at d = 20 and 400 at d = 100,
    # benchmarks/results/sampling.json); every `thinning`-th step is kept, which bounds the
    # draws copied to the host and read by ArviZ at 4096 chains.
    "nuts": {"chains": {"20": [4, 64, 1024], "100": [4, 64, 1024]},
             "warmup": 500, "samples": 500, "repeats": 2},
    "mala": {"chains": {"20": [1, 16, 256, 4096], "100": [1, 16, 256, 1024]},
             "warmup": 500, "total_steps": 100_000, "min_steps": 5000, "thinning": 10,
             "repeats": 3},
    "gibbs": {"chains": [1, 16, 256, 4096], "warmup": 100, "total_steps": 100_000,
              "min_steps": 500, "thinning": 5, "repeats": 3},
    "estimators": {"dims": [2, 32, 256], "batches": [256, 16384],
                   "steps": {"256": 1000, "16384": 100}, "repeats": 2,
                   "n_min": 2048, "check_rows": 64},
}
#: One size each: every compilation costs seconds on a CPU, and the run is a smoke test.
QUICK = {
    "nuts": {"chains": {"20": [4]}, "warmup": 200, "samples": 200, "repeats": 1},
    "mala": {"chains": {"20": [1]}, "warmup": 300, "total_steps": 50_000, "min_steps": 1000,
             "thinning": 5, "repeats": 1},
    "gibbs": {"chains": [16], "warmup": 50, "total_steps": 500, "min_steps": 500,
              "thinning": 2, "repeats": 1},
    "estimators": {"dims": [2], "batches": [64], "steps": {"64": 20}, "repeats": 1,
                   "n_min": 256, "check_rows": 16},
}
#: the MLP and the optimizer of estimators.py; DSM's noise level; NCE's noise ratio
MLP = {"hidden": estimator_bench.FULL["hidden"], "learning_rate": estimator_bench.FULL[
    "learning_rate"], "sigma": estimator_bench.FULL["sigma"], "nce_nu": 1.0}


def device_record() -> dict:
    """The backend JAX runs on and its first device's kind (``"NVIDIA H200"``, ``"cpu"``)."""
    device = jax.devices()[0]
    return {"backend": jax.default_backend(), "device": device.device_kind,
            "device_count": jax.device_count(), "devices": [str(d) for d in jax.devices()]}


def timed_calls(call, repeats: int) -> tuple[dict, list]:
    """``call(seed)`` once (it compiles: its time is reported apart), then ``repeats`` warm
    calls with other seeds; the last warm call's output and every timing."""
    _, first = sampling_bench.timed(lambda: call(0))
    out, seconds = None, []
    for seed in range(1, repeats + 1):
        out, wall = sampling_bench.timed(lambda seed=seed: call(seed))
        seconds.append(wall)
    return out, {"first_call_seconds": first, "seconds": float(np.median(seconds)),
                 "seconds_all": seconds}


def z_check(estimate: np.ndarray, truth, mcse: np.ndarray, ess: np.ndarray) -> dict:
    """The largest ``|estimate - truth| / mcse`` over coordinates, against :data:`Z_LIMIT`;
    an ESS below :data:`MIN_ESS` fails the check (its MCSE cannot be trusted)."""
    z = np.abs(np.asarray(estimate) - truth) / np.asarray(mcse)
    return {"kind": "mean within 4 MCSE of the truth", "max_z": float(np.max(z)),
            "limit": Z_LIMIT, "ess_min": float(np.min(ess)), "min_ess": MIN_ESS,
            "passed": bool(np.all(np.isfinite(z)) and z.max() < Z_LIMIT
                           and np.min(ess) >= MIN_ESS)}


def mean_check(draws: np.ndarray, truth) -> dict:
    """Every coordinate's mean of ``draws`` (chain, draw, d) against ``truth``."""
    data = az.convert_to_dataset({"x": draws})
    mcse = az.mcse(data, method="mean")["x"].values
    ess = az.ess(data, method="mean")["x"].values
    return z_check(draws.mean(axis=(0, 1)), truth, mcse, ess)


# ---------------------------------------------------------------------------------------------
# samplers


def steps_per_chain(chains: int, cfg: dict) -> int:
    """``max(min_steps, total_steps // chains)``, rounded up to a multiple of the thinning."""
    steps = max(cfg["min_steps"], cfg["total_steps"] // chains)
    return -(-steps // cfg["thinning"]) * cfg["thinning"]


def gaussian_row(sampler: str, d: int, chains: int, cfg: dict) -> dict:
    model, params = sampling_bench.gaussian_target(d)
    truth = np.asarray(params["mu"])
    if sampler == "nuts":
        samples, thinning, options = cfg["samples"], 1, {}
    else:
        thinning = cfg["thinning"]
        samples = steps_per_chain(chains, cfg) // thinning
        options = {"step_size": sampling_bench.MALA_STEP_SIZE[d], "adapt_step_size": False}

    def call(seed):
        idata = un.sample(model, params, key=jax.random.key(seed), sampler=sampler,
                          num_chains=chains, num_warmup=cfg["warmup"], num_samples=samples,
                          thinning=thinning, progress_bar=False, warn=False, **options)
        return idata.posterior["x"].values

    draws, timing = timed_calls(call, cfg["repeats"])
    ess = sampling_bench.min_bulk_ess(draws)
    return {"benchmark": sampler, "dim": d, "chains": chains, "samples": samples,
            "thinning": thinning, "warmup": cfg["warmup"], **timing, "ess_min": ess,
            "rate": ess / timing["seconds_all"][-1], "rate_unit": "ESS/s",
            "check": mean_check(draws, truth)}


def gibbs_row(chains: int, cfg: dict) -> dict:
    ising = sampling_bench.ISING
    model = un.models.ising_chain(ising["n"], coupling=ising["coupling"], field=ising["field"])
    sweeps, thinning = steps_per_chain(chains, cfg), cfg["thinning"]

    def call(seed):
        idata = un.sample(model, model.params, key=jax.random.key(seed), sampler="gibbs",
                          num_chains=chains, num_warmup=cfg["warmup"],
                          num_samples=sweeps // thinning, thinning=thinning,
                          progress_bar=False, warn=False)
        return idata.posterior["x"].values

    draws, timing = timed_calls(call, cfg["repeats"])
    magnetization = draws.mean(axis=-1)  # (chain, draw)
    data = az.convert_to_dataset({"m": magnetization})
    exact = sampling_bench.exact_mean_spin(ising["n"], ising["coupling"], ising["field"])
    check = z_check(np.array([magnetization.mean()]), exact,
                    np.atleast_1d(az.mcse(data, method="mean")["m"].values),
                    np.atleast_1d(az.ess(data, method="mean")["m"].values))
    check.update(kind="mean spin within 4 MCSE of the exact value", exact=exact,
                 estimate=float(magnetization.mean()))
    seconds = timing["seconds_all"][-1]
    return {"benchmark": "gibbs", "spins": ising["n"], "chains": chains, "sweeps": sweeps,
            "thinning": thinning, "warmup": cfg["warmup"], **timing,
            "sweeps_per_s": sweeps / seconds, "rate": chains * sweeps / seconds,
            "rate_unit": "chain-sweeps/s", "check": check}


# ---------------------------------------------------------------------------------------------
# estimators


def mlp_model(d: int) -> un.Model:
    params = {"net": [{k: jnp.asarray(v) for k, v in layer.items()}
                      for layer in estimator_bench.init_mlp(d, MLP["hidden"])]}
    return un.Model(estimator_bench.mlp_energy, params=params, support=un.supports.real(d))


def nce_noise(d: int):
    """NCE's noise: the data's distribution here, a standard normal in ``d`` dimensions."""
    return dist.Normal(jnp.zeros(d), 1.0).to_event(1)


def make_estimator(name: str, d: int) -> un.estimators.Estimator:
    if name == "sm":
        return un.estimators.SM()
    if name == "dsm":
        return un.estimators.DSM(sigma=MLP["sigma"], control_variate=False)
    if name == "ssm":
        return un.estimators.SSM(num_projections=1)
    return un.estimators.NCE(noise=nce_noise(d), nu=MLP["nce_nu"])


def nce_term(params, log_z, x, noise_draws, noise, nu):
    """``softplus(-G(x)) + ν mean_k softplus(G(y_k))`` with ``G = -E - log Z - log p_n - log ν``
    (Gutmann & Hyvärinen 2010, the noise-to-data ratio ν)."""
    def log_ratio(y):
        return (-estimator_bench.mlp_energy(params, y) - log_z - noise.log_prob(y)
                - jnp.log(nu))

    return (jax.nn.softplus(-log_ratio(x))
            + nu * jnp.mean(jax.vmap(lambda y: jax.nn.softplus(log_ratio(y)))(noise_draws)))


def reference_terms(name: str, params, log_z, x, row_keys, d: int) -> jax.Array:
    """The hand-written loss terms, each observation's noise drawn from its row's key."""
    if name == "sm":
        return jax.vmap(estimator_bench.sm_term, (None, 0))(params, x)
    if name == "dsm":
        z = jax.vmap(lambda k: jax.random.normal(k, (d,), x.dtype))(row_keys)
        return jax.vmap(estimator_bench.dsm_term, (None, 0, 0, None))(params, x, z,
                                                                       MLP["sigma"])
    if name == "ssm":  # one projection per observation: shape (1, d)
        v = jax.vmap(lambda k: jax.random.normal(k, (1, d), x.dtype)[0])(row_keys)
        return jax.vmap(estimator_bench.ssm_term, (None, 0, 0))(params, x, v)
    noise, nu = nce_noise(d), MLP["nce_nu"]
    k = max(1, int(np.ceil(nu)))
    ys = jax.vmap(lambda key: noise.sample(key, (k,)))(row_keys)
    return jax.vmap(nce_term, (None, None, 0, 0, None, None))(params, log_z, x, ys, noise, nu)


def reference_device() -> jax.Device:
    """Where the reference terms are computed: the CPU (an independent backend when the run is
    on an accelerator), or the default device when JAX was started without the CPU."""
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return jax.devices()[0]


def loss_check(name: str, model: un.Model, data: np.ndarray, rows: int) -> dict:
    """The objective's per-observation terms on the benchmark's backend against
    :func:`reference_terms` compiled on their own on :func:`reference_device`, on ``rows`` rows.

    The objective is built with noise keyed on the row (``resample=False``): row ``i``'s noise
    comes from ``fold_in(noise_key, i)``, the key of the objective's state, and ``jax.random``
    draws from that key the same numbers as unnorm's generator."""
    d = model.support.event_shape[0]
    objective = make_estimator(name, d).build(model, resample=False)
    params = model.params
    data = jnp.asarray(data)
    state = objective.init(params, jax.random.key(3), data)
    theta, log_z = params, None
    if objective.nuisance is not None:
        state, nuisance = objective.nuisance(params, state, data)
        theta, log_z = (params, nuisance), nuisance["log_z"]
    index = jnp.arange(rows)
    batch = Batch(data[:rows], index)
    row_keys = jax.vmap(lambda i: jax.random.fold_in(state.noise_key, i))(index)
    device = reference_device()
    # float32 products on both sides: a GPU's default TF32 would round the two differently
    with jax.default_matmul_precision("float32"):
        ours = np.asarray(jax.jit(objective.terms)(theta, state, batch, jax.random.key(4)))
        inputs = jax.device_put((params, log_z, batch.x, row_keys), device)
        theirs = np.asarray(jax.jit(reference_terms, static_argnums=(0, 5))(name, *inputs, d))
    scale = max(1.0, float(np.max(np.abs(theirs))))
    worst = float(np.max(np.abs(ours - theirs)))
    return {"kind": "loss terms equal the plain-JAX reference", "rows": rows,
            "reference_device": str(device), "max_abs_diff": worst, "scale": scale,
            "rtol": LOSS_RTOL, "loss_unnorm": float(ours.mean()),
            "loss_reference": float(theirs.mean()),
            "passed": bool(np.all(np.isfinite(ours)) and worst <= LOSS_RTOL * scale)}


def estimator_row(name: str, d: int, batch: int, cfg: dict) -> dict:
    model = mlp_model(d)
    n = max(cfg["n_min"], batch)
    data = np.random.default_rng(d).normal(size=(n, d)).astype(np.float32)
    estimator = make_estimator(name, d)
    optimizer = optax.adam(MLP["learning_rate"])
    steps = cfg["steps"][str(batch)]

    def call(seed):
        fit = un.fit(model, data, estimator=estimator, key=jax.random.key(seed),
                     optimizer=optimizer, num_steps=steps, batch_size=batch,
                     progress_bar=False, stderr=False)
        jax.block_until_ready(fit.params)
        return fit

    with warnings.catch_warnings():  # a fixed number of minibatch steps: "did not converge"
        warnings.simplefilter("ignore", RuntimeWarning)
        fit, timing = timed_calls(call, cfg["repeats"])
    check = loss_check(name, model, data, cfg["check_rows"])
    final = float(np.asarray(fit.loss)[-1])
    check["final_loss"] = final
    check["passed"] = check["passed"] and bool(np.isfinite(final))
    return {"benchmark": name, "dim": d, "batch_size": batch, "n": n, "steps": int(fit.num_steps),
            **timing, "rate": int(fit.num_steps) / timing["seconds_all"][-1],
            "rate_unit": "steps/s", "stages": list(fit.stages), "check": check}


# ---------------------------------------------------------------------------------------------
# driver


def run_all(cfg: dict, chosen: list[str], record: dict) -> list[dict]:
    """Every chosen benchmark at every size. A size that raises (out of device memory, say)
    becomes a row whose check failed, with the error, and the run goes on."""
    rows = []

    def add(make_row, **size):
        try:
            row = make_row()
        except Exception as err:  # noqa: BLE001 - recorded in the results, the run goes on
            row = {**size, "error": f"{type(err).__name__}: {err}",
                   "check": {"kind": "the benchmark ran", "passed": False}}
        rows.append({**row, "backend": record["backend"], "device": record["device"]})
        print_row(rows[-1])

    for sampler in ("nuts", "mala"):
        if sampler in chosen:
            for d, chain_counts in cfg[sampler]["chains"].items():
                for chains in chain_counts:
                    add(lambda s=sampler, d=int(d), c=chains: gaussian_row(s, d, c, cfg[s]),
                        benchmark=sampler, dim=int(d), chains=chains)
    if "gibbs" in chosen:
        for chains in cfg["gibbs"]["chains"]:
            add(lambda c=chains: gibbs_row(c, cfg["gibbs"]), benchmark="gibbs",
                spins=sampling_bench.ISING["n"], chains=chains)
    est = cfg["estimators"]
    for name in ESTIMATORS:
        if name in chosen:
            for d in est["dims"]:
                for batch in est["batches"]:
                    add(lambda n=name, d=d, b=batch: estimator_row(n, d, b, est),
                        benchmark=name, dim=d, batch_size=batch)
    return rows


def size_label(row: dict) -> str:
    if row["benchmark"] in ESTIMATORS:
        return f"d={row['dim']} b={row['batch_size']}"
    if row["benchmark"] == "gibbs":
        return f"n={row['spins']} C={row['chains']}"
    return f"d={row['dim']} C={row['chains']}"


def check_label(row: dict) -> str:
    check = row["check"]
    if "error" in row:
        return row["error"]
    if "max_z" in check:
        return f"max z {check['max_z']:.2f} (ESS {check['ess_min']:.0f})"
    return f"max |diff| {check['max_abs_diff']:.1e} (scale {check['scale']:.1f})"


HEADER = (f"{'benchmark':9} {'size':>16} {'rate':>14} {'unit':14} {'seconds':>8} "
          f"{'first s':>8}  check")


def print_row(row: dict) -> None:
    verdict = f"{'ok' if row['check']['passed'] else 'FAILED'}: {check_label(row)}"
    if "error" in row:
        print(f"{row['benchmark']:9} {size_label(row):>16} {'':>47}  {verdict}", flush=True)
        return
    print(f"{row['benchmark']:9} {size_label(row):>16} {row['rate']:14.1f} {row['rate_unit']:14} "
          f"{row['seconds']:8.3f} {row['first_call_seconds']:8.2f}  {verdict}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    every = SAMPLERS + ESTIMATORS
    parser.add_argument("--only", default=",".join(every),
                        help=f"comma-separated subset of {','.join(every)}")
    parser.add_argument("--out", type=Path,
                        help="JSON results file (default benchmarks/results/gpu-<backend>.json)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(every))
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {', '.join(every)}")

    record = device_record()
    env = machine.environment(("jax", "jaxlib", "numpyro", "optax", "folx", "numpy", "arviz",
                               "unnorm"))
    env.update(record)
    env["load_average_start"] = os.getloadavg()
    print(f"backend {record['backend']}, device {record['device']}\n{HEADER}", flush=True)
    started = time.perf_counter()
    rows = run_all(cfg, chosen, record)
    env["load_average_end"] = os.getloadavg()
    env["total_seconds"] = round(time.perf_counter() - started, 1)

    failed = [f"{r['benchmark']} {size_label(r)}" for r in rows if not r["check"]["passed"]]
    out = args.out or RESULTS / f"gpu-{record['backend']}.json"
    given = sys.argv[1:] if argv is None else list(argv)
    result = {"command": " ".join(["python", "benchmarks/gpu.py", *given]),
              "quick": args.quick, "config": cfg, "environment": env, "results": rows,
              "all_checks_passed": not failed}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}  ({env['total_seconds']:.0f} s)")
    if failed:
        print(f"correctness checks FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
