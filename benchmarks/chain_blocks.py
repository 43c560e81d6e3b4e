"""The cost of running gradient-based chains in fixed-width blocks (samplers/chain_blocks.py).

Warm ``un.sample`` calls (the same model called again with other keys, after one untimed call),
the kernels' own block widths against the blocks switched off (every group of chains one
vectorized computation, as before the blocks), alternated in one process so that both see the
same load. Wall time and the process's CPU time (both cores' work, less sensitive to other
processes on a shared machine) are reported, median and minimum over the rounds.

Run from the repository root::

    python benchmarks/chain_blocks.py                  # MALA 4, 64, 1024 chains; NUTS 4 chains
    python benchmarks/chain_blocks.py --rounds 3 --only nuts4

Cases: MALA on N(0, I₁₀) at a fixed step size 0.9, no warmup (4 chains × 20 000 draws, 64 × 2000,
1024 × 1000); NUTS on gaussian(2), 4 chains, 1000 warmup steps and 1000 draws.
"""

from __future__ import annotations

import argparse
import gc
import time

import jax
import numpy as np

import unnorm as un
from unnorm.samplers import chain_blocks

CASES = {
    "mala4": ("mala", 10, 4, 0, 20_000),
    "mala64": ("mala", 10, 64, 0, 2_000),
    "mala1024": ("mala", 10, 1024, 0, 1_000),
    "nuts4": ("nuts", 2, 4, 1_000, 1_000),
}
_KERNEL_WIDTH = chain_blocks.block_width


def _options(case: str) -> tuple[un.Model, dict, int]:
    sampler, dim, chains, warmup, draws = CASES[case]
    options = dict(sampler=sampler, num_chains=chains, num_warmup=warmup, num_samples=draws,
                   progress_bar=False, warn=False)
    if sampler == "mala":
        options.update(step_size=0.9, adapt_step_size=False)
    return un.models.gaussian(dim), options, chains * (warmup + draws)


def _use_blocks(on: bool) -> None:
    chain_blocks.block_width = _KERNEL_WIDTH if on else (lambda kernel: None)


def measure(case: str, rounds: int) -> dict:
    model, options, chain_steps = _options(case)
    times = {True: ([], []), False: ([], [])}
    for blocks in (False, True):
        _use_blocks(blocks)
        un.sample(model, key=jax.random.key(0), **options)          # compile
    for r in range(rounds):
        for blocks in (False, True):
            _use_blocks(blocks)
            gc.collect()
            gc.disable()
            wall, cpu = time.perf_counter(), time.process_time()
            un.sample(model, key=jax.random.key(r + 1), **options)
            times[blocks][0].append(time.perf_counter() - wall)
            times[blocks][1].append(time.process_time() - cpu)
            gc.enable()
    _use_blocks(True)
    out = {"chain_steps": chain_steps}
    for blocks, label in ((False, "unblocked"), (True, "blocks")):
        wall, cpu = (np.asarray(t) for t in times[blocks])
        out[label] = {"wall_median": float(np.median(wall)), "wall_min": float(wall.min()),
                      "cpu_median": float(np.median(cpu)), "cpu_min": float(cpu.min())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", default=",".join(CASES))
    args = parser.parse_args()
    print("case       | unblocked wall / cpu (s) | blocks wall / cpu (s) | ratio wall / cpu")
    for case in args.only.split(","):
        result = measure(case, args.rounds)
        old, new = result["unblocked"], result["blocks"]
        print(f"{case:10s} | {old['wall_median']:.3f} / {old['cpu_median']:.3f}"
              f"            | {new['wall_median']:.3f} / {new['cpu_median']:.3f}"
              f"         | {new['wall_median'] / old['wall_median']:.2f} / "
              f"{new['cpu_median'] / old['cpu_median']:.2f}")


if __name__ == "__main__":
    main()
