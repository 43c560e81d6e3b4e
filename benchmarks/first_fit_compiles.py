"""What a first fit compiles: for each estimator (and ``un.sample``), in a fresh process, the
CPU seconds of the call, the number of XLA programs it compiled, and the programs that cost
most to trace, lower and compile (JAX's monitoring events, grouped by function name).

    python benchmarks/first_fit_compiles.py                   # every case, about 2 minutes
    python benchmarks/first_fit_compiles.py --only sm,nce --warm --out /tmp/compiles.json

``--warm`` fits a second time in the same process and lists what that compiled (nothing, when
each program is reused across fits of one model).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("sm", "ssm", "dsm", "nce", "ksd", "pcd", "mle", "nuts", "mala")
SAMPLERS = ("nuts", "mala")
#: the monitoring events whose durations are summed per program
STAGES = ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration", "backend_compile_duration")


def measure(case: str, warm: bool) -> dict:
    """One case in this process (which must not have compiled anything yet)."""
    import jax
    import numpy as np

    import unnorm as un

    events: list[tuple[str, str, float]] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        events.append((event.rsplit("/", 1)[-1], kwargs.get("fun_name", "?"), duration))

    jax.monitoring.register_event_duration_secs_listener(listener)
    model = un.models.gaussian(2)
    data = np.random.default_rng(0).normal(size=(3000, 2))

    def run(seed: int) -> None:
        if case in SAMPLERS:
            un.sample(model, {"mu": np.zeros(2), "prec": np.eye(2)}, key=jax.random.key(seed),
                      sampler=case, num_chains=4, num_warmup=200, num_samples=200,
                      progress_bar=False)
        else:
            un.fit(model, data, case, key=jax.random.key(seed), progress_bar=False, stderr=True)

    started = time.process_time()
    run(0)
    cpu = time.process_time() - started
    cost: dict[str, float] = collections.defaultdict(float)
    compiled: collections.Counter = collections.Counter()
    for stage, name, duration in events:
        if stage in STAGES:
            cost[name] += duration
        if stage == "backend_compile_duration":
            compiled[name] += 1
    top = sorted(cost.items(), key=lambda item: -item[1])[:8]
    result = {"case": case, "cpu_seconds": cpu, "programs": sum(compiled.values()),
              "top": [{"program": name, "compiled": compiled[name], "seconds": seconds}
                      for name, seconds in top]}
    if warm:
        events.clear()
        run(1)
        result["warm_compiled"] = [name for stage, name, _ in events
                                   if stage == "backend_compile_duration"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--warm", action="store_true", help="also list a second fit's compiles")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.warm)))
        return
    results = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for case in args.only.split(","):
        command = [sys.executable, __file__, "--child", case] + (["--warm"] if args.warm else [])
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"{case:5s} cpu {result['cpu_seconds']:5.2f} s  programs {result['programs']:3d}"
              + (f"  warm compiled {result['warm_compiled']}" if args.warm else ""))
        for row in result["top"][:4]:
            print(f"      {row['program'][:40]:40s} x{row['compiled']}  {row['seconds']:.2f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
