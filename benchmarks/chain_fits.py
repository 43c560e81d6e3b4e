"""Cold and warm time of the chain-based fits (MLE, CD, PCD), with their compilations.

Each configuration runs in a fresh process: the first fit (cold: tracing, compilation and
running; ``import unnorm`` excluded) and a second fit of the same model and data with another
key (warm: everything compiled is reused). XLA compilations are counted with a
``jax.monitoring`` listener on the backend's compile events.

    python benchmarks/chain_fits.py                  # mle (nuts, mala), cd, pcd; n = 3000
    python benchmarks/chain_fits.py --only mle:nuts --repeats 3

With ``--pcd-chains``, PCD's persistent chains on two CPU host devices instead: for each chain
count C, ``un.fit(gaussian(2), data, PCD(k=5, num_chains=C), num_steps=--steps, stderr=False)``
with the chains split over the two devices, kept replicated on both (the policy's minimum per
device, ``unnorm.sharding.MIN_CPU_CHAINS_PER_DEVICE``, set to 1 or past C in the child), and
on one device; each in a fresh process (one cold fit, then two warm fits with other keys, the
faster kept), the placements alternated within each of ``--repeats`` rounds, and the medians
of warm wall and process CPU time printed with the load average:

    python benchmarks/chain_fits.py --pcd-chains 64,128,256,512,1024,2048 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = ("mle:nuts", "mle:mala", "cd:mala", "pcd:mala")

_CHILD = r"""
import json, sys, time
started = time.perf_counter()
import jax, numpy as np
import unnorm as un
from jax import monitoring
import_s = time.perf_counter() - started
estimator, sampler, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
compiles = {"count": 0, "seconds": 0.0}

def listener(event, duration, **_):
    if event == "/jax/core/compile/backend_compile_duration":
        compiles["count"] += 1
        compiles["seconds"] += duration

monitoring.register_event_duration_secs_listener(listener)
rng = np.random.default_rng(0)
data = rng.multivariate_normal([1.0, -1.0], [[1.0, 0.5], [0.5, 2.0]], size=n)
model = un.models.gaussian(2)
cls = {"mle": un.estimators.MLE, "cd": un.estimators.CD, "pcd": un.estimators.PCD}[estimator]
out = {"import_s": import_s}
for label, seed in (("cold", 0), ("warm", 1)):
    before = dict(compiles)
    t = time.perf_counter()
    fit = un.fit(model, data, cls(sampler=sampler), key=jax.random.key(seed), progress_bar=False)
    out[label] = {"seconds": time.perf_counter() - t,
                  "compiles": compiles["count"] - before["count"],
                  "compile_seconds": compiles["seconds"] - before["seconds"],
                  "draws_per_chain": int(fit.chains.posterior["x"].shape[1]),
                  "mu": np.asarray(fit.params["mu"]).tolist(),
                  "se_mu": np.asarray(fit.stderr["mu"]).tolist()}
print(json.dumps(out))
"""


_PLACEMENT_CHILD = r"""
import json, sys, time
import jax, numpy as np
import unnorm as un
from unnorm import sharding
placement, num_chains, n, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
# the policy's minimum per device, moved so that the chains are split or stay replicated
sharding.MIN_CPU_CHAINS_PER_DEVICE = 1 if placement == "split" else num_chains + 1
rng = np.random.default_rng(0)
data = rng.multivariate_normal([1.0, -1.0], [[1.0, 0.5], [0.5, 2.0]], size=n)
model = un.models.gaussian(2)
out = {"devices": len(jax.devices()),
       "split": sharding.chains_worth_splitting(num_chains, len(jax.devices()), "cpu")}
for label, seed in (("cold", 0), ("warm1", 1), ("warm2", 2)):
    wall, cpu = time.perf_counter(), time.process_time()
    un.fit(model, data, un.estimators.PCD(k=5, num_chains=num_chains), num_steps=steps,
           stderr=False, key=jax.random.key(seed), progress_bar=False)
    out[label] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
print(json.dumps(out))
"""

#: the placements of ``--pcd-chains``: host devices of the child, and its chains' placement
PLACEMENTS = {"split": 2, "replicated": 2, "one": 1}


def _load_average() -> list[str]:
    with open("/proc/loadavg") as handle:
        return handle.read().split()[:3]


def run_placement(placement: str, num_chains: int, n: int, steps: int) -> dict:
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
             if not flag.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={PLACEMENTS[placement]}")
    env = {**os.environ, "CI": "1", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags)}
    result = subprocess.run([sys.executable, "-c", _PLACEMENT_CHILD, placement,
                             str(num_chains), str(n), str(steps)],
                            capture_output=True, text=True, env=env, check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if out["split"] != (placement == "split"):
        raise RuntimeError(f"{placement} run of {num_chains} chains: split={out['split']}")
    # the faster warm fit: the slower one carries more of the machine's other load
    out["warm"] = min(out.pop("warm1"), out.pop("warm2"), key=lambda t: t["wall_s"])
    return out


def placement_study(args) -> list[dict]:
    counts = [int(c) for c in args.pcd_chains.split(",")]
    placements = args.placements.split(",")
    rows = []
    print(f"load average at the start: {' '.join(_load_average())}", flush=True)
    for round_index in range(args.repeats):
        for num_chains in counts:
            # alternate which placement runs first, so that drifts of the load even out
            order = placements if round_index % 2 == 0 else placements[::-1]
            for placement in order:
                result = run_placement(placement, num_chains, args.n, args.steps)
                rows.append({"placement": placement, "num_chains": num_chains,
                             "round": round_index, "load": _load_average(), **result})
                warm = result["warm"]
                print(f"round {round_index} C={num_chains:5d} {placement:10} warm "
                      f"{warm['wall_s']:.3f} s wall / {warm['cpu_s']:.3f} s CPU, cold "
                      f"{result['cold']['cpu_s']:.1f} s CPU", flush=True)
    print(f"load average at the end: {' '.join(_load_average())}")
    print(f"\n{'C':>5} " + " ".join(f"{p + ' wall/CPU':>22}" for p in placements)
          + "   split/replicated wall, CPU")
    for num_chains in counts:
        medians = {}
        for placement in placements:
            runs = [r["warm"] for r in rows
                    if r["placement"] == placement and r["num_chains"] == num_chains]
            medians[placement] = (statistics.median(r["wall_s"] for r in runs),
                                  statistics.median(r["cpu_s"] for r in runs))
        line = f"{num_chains:5d} " + " ".join(
            f"{medians[p][0]:11.3f} / {medians[p][1]:.3f}" for p in placements)
        if "split" in medians and "replicated" in medians:
            line += (f"   {medians['split'][0] / medians['replicated'][0]:.2f}, "
                     f"{medians['split'][1] / medians['replicated'][1]:.2f}")
        print(line)
    return rows


def run_one(config: str, n: int) -> dict:
    estimator, sampler = config.split(":")
    env = {**os.environ, "CI": "1"}
    result = subprocess.run([sys.executable, "-c", _CHILD, estimator, sampler, str(n)],
                            capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(CONFIGS))
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--pcd-chains", default=None,
                        help="comma-separated chain counts: PCD's persistent chains split "
                             "over two CPU host devices or not, instead of --only")
    parser.add_argument("--placements", default=",".join(PLACEMENTS),
                        help="with --pcd-chains: which of split, replicated, one")
    parser.add_argument("--steps", type=int, default=1000, help="with --pcd-chains")
    args = parser.parse_args()
    if args.pcd_chains:
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        load_start = _load_average()
        rows = placement_study(args)
        if args.out:
            with open(args.out, "w") as handle:
                json.dump({"started": started, "commit": commit, "n": args.n,
                           "steps": args.steps, "load_average_start": load_start,
                           "load_average_end": _load_average(), "runs": rows}, handle,
                          indent=1)
        return
    rows = []
    print(f"{'config':10} {'cold s':>7} {'compiles':>8} {'compile s':>9} {'warm s':>7} "
          f"{'warm compiles':>13}")
    for _ in range(args.repeats):
        for config in args.only.split(","):
            started = time.time()
            result = run_one(config, args.n)
            rows.append({"config": config, "n": args.n, "when": started, **result})
            cold, warm = result["cold"], result["warm"]
            print(f"{config:10} {cold['seconds']:7.2f} {cold['compiles']:8d} "
                  f"{cold['compile_seconds']:9.2f} {warm['seconds']:7.2f} "
                  f"{warm['compiles']:13d}", flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
