"""The cost of running gradient-based chains in fixed-width blocks (samplers/chain_blocks.py).

Warm ``un.sample`` calls (the same model called again with other keys, after one untimed call),
a layout of the chains against no blocks (every group of chains one vectorized computation),
alternated in one process so that both see the same load. The layout is the kernels' own
blocks (NUTS and HMC: 2; the Langevin kernels run without), or with ``--width W`` blocks of
``W`` chains for every gradient-based kernel, each block one call (MALA through its
``chain_block=W`` option, as a user asks for it), or with ``--pad U`` every
group padded to a multiple of ``U`` chains in one vectorized call (the alternative tried for
MALA, emulated here by a layout whose units are its groups). Wall time and the process's CPU
time (both cores' work, less sensitive to other processes on a shared machine) are reported,
median and minimum over the rounds.

Run from the repository root::

    python benchmarks/chain_blocks.py --only nuts4,hmc4      # the kernels' own blocks
    python benchmarks/chain_blocks.py --width 32 --only mala4,mala64,mala1024
    python benchmarks/chain_blocks.py --pad 16 --only mala4,mala8,mala1024
    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python benchmarks/chain_blocks.py --only nuts4,hmc4   # on two host devices

With several devices ``un.sample`` splits the chains over all of them: "no blocks" is then the
chain axis partitioned by XLA over the devices, "blocks" the kernels' blocks run on the
devices that hold them (:mod:`unnorm.samplers.devices`).

Cases: MALA on N(0, I₁₀) at a fixed step size 0.9, no warmup (4 chains × 20 000 draws, 64 × 2000,
1024 × 1000, 8 × 10 000); NUTS and HMC on gaussian(2), 4 chains, 1000 warmup steps and 1000
draws.
"""

from __future__ import annotations

import argparse
import gc
import time

import jax
import numpy as np

import unnorm as un
from unnorm.samplers import chain_blocks, chain_groups

CASES = {
    "mala4": ("mala", 10, 4, 0, 20_000),
    "mala64": ("mala", 10, 64, 0, 2_000),
    "mala1024": ("mala", 10, 1024, 0, 1_000),
    "mala8": ("mala", 10, 8, 0, 10_000),
    "nuts4": ("nuts", 2, 4, 1_000, 1_000),
    "hmc4": ("hmc", 2, 4, 1_000, 1_000),
}
_KERNEL_WIDTH = chain_blocks.block_width
_UNITS, _UNITS_OF = chain_groups.GroupLayout.units, chain_groups.GroupLayout.units_of
#: the samplers whose blocks a user asks for with the chain_block option
_CHAIN_BLOCK = ("mala", "langevin", "annealed_langevin")


def _options(case: str) -> tuple[un.Model, dict, int]:
    sampler, dim, chains, warmup, draws = CASES[case]
    options = dict(sampler=sampler, num_chains=chains, num_warmup=warmup, num_samples=draws,
                   progress_bar=False, warn=False)
    if sampler == "mala":
        options.update(step_size=0.9, adapt_step_size=False)
    return un.models.gaussian(dim), options, chains * (warmup + draws)


def _layout(on: bool, width: int | None, pad: int | None, options: dict) -> dict:
    """Switch the layout under test on (``width``, ``pad`` or the kernels' own) or off; the
    ``un.sample`` options of the run (with ``chain_block`` where the sampler takes it)."""
    layout = chain_groups.GroupLayout
    layout.units, layout.units_of = _UNITS, _UNITS_OF
    if on and width is not None and pad is None and options["sampler"] in _CHAIN_BLOCK:
        chain_blocks.block_width = _KERNEL_WIDTH
        return dict(options, chain_block=width)
    if not on:
        chain_blocks.block_width = lambda kernel: None
    elif width is None and pad is None:
        chain_blocks.block_width = _KERNEL_WIDTH
    else:
        size = width if pad is None else pad
        chain_blocks.block_width = lambda kernel: size if kernel.uses_gradient else None
        if pad is not None:   # groups of whole units of `pad` chains, each group one call
            layout.units = property(lambda self: self)
            layout.units_of = lambda self, group: range(group, group + 1)
    return options


def measure(case: str, rounds: int, width: int | None = None, pad: int | None = None) -> dict:
    model, options, chain_steps = _options(case)
    times = {True: ([], []), False: ([], [])}
    for blocks in (False, True):
        run_options = _layout(blocks, width, pad, options)
        un.sample(model, key=jax.random.key(0), **run_options)      # compile
    for r in range(rounds):
        for blocks in (False, True):
            run_options = _layout(blocks, width, pad, options)
            gc.collect()
            gc.disable()
            wall, cpu = time.perf_counter(), time.process_time()
            un.sample(model, key=jax.random.key(r + 1), **run_options)
            times[blocks][0].append(time.perf_counter() - wall)
            times[blocks][1].append(time.process_time() - cpu)
            gc.enable()
    _layout(False, None, None, options)
    chain_blocks.block_width = _KERNEL_WIDTH
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
    parser.add_argument("--width", type=int, default=None,
                        help="blocks of this many chains for every gradient-based kernel")
    parser.add_argument("--pad", type=int, default=None,
                        help="every group padded to a multiple of this many chains, one call")
    args = parser.parse_args()
    print("case       | unblocked wall / cpu (s) | blocks wall / cpu (s) | ratio wall / cpu")
    for case in args.only.split(","):
        result = measure(case, args.rounds, args.width, args.pad)
        old, new = result["unblocked"], result["blocks"]
        print(f"{case:10s} | {old['wall_median']:.3f} / {old['cpu_median']:.3f}"
              f"            | {new['wall_median']:.3f} / {new['cpu_median']:.3f}"
              f"         | {new['wall_median'] / old['wall_median']:.2f} / "
              f"{new['cpu_median'] / old['cpu_median']:.2f}")


if __name__ == "__main__":
    main()
