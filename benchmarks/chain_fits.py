"""Cold and warm time of the chain-based fits (MLE, CD, PCD), with their compilations.

Each configuration runs in a fresh process: the first fit (cold: tracing, compilation and
running; ``import unnorm`` excluded) and a second fit of the same model and data with another
key (warm: everything compiled is reused). XLA compilations are counted with a
``jax.monitoring`` listener on the backend's compile events.

    python benchmarks/chain_fits.py                  # mle (nuts, mala), cd, pcd; n = 3000
    python benchmarks/chain_fits.py --only mle:nuts --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
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
    args = parser.parse_args()
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
