"""XLA compile options for unnorm's own compiled loops (per compilation, never process-wide).

Training chunks. On the CPU, XLA hands dot products and the elementwise work around them to
YNNPACK fusions by default. For the fit driver's training steps on small networks, batch 256,
these ran slower than XLA's own loop emitters: with them off, a denoising score matching step of
a 2-layer MLP took 0.97-1.26 ms against 1.40-1.73 ms at d = 2, 1.71-1.80 against 2.08-2.09 at
d = 32 and 2.42-2.59 against 3.36-3.60 at d = 256 (benchmarks/README.md).
The solvers' full-data derivative passes (Newton's and the sandwich's) are the same kind of
small per-row work over many rows and are compiled with the same options.

Sampling chunks. A sampler's step is elementwise work over (chains, coordinates) arrays: the
random numbers' hash rounds, the proposal, the acceptance test. XLA's CPU backend asks LLVM for
256-bit vectors by default; where the CPU has 512-bit ones (AVX-512), preferring them ran 400
blocked-Gibbs sweeps of 128 chains × 100 spins in 32-35 ms against 38-41 ms, and a 256-chain
`un.sample` call in 48 ms against 56 ms (medians; benchmarks/README.md). On a CPU without
512-bit vectors the preference has no effect.

The options are XLA's, some experimental, so each set is used only when the installed jaxlib
accepts it, and only on the CPU backend; elsewhere nothing is changed.
"""

from __future__ import annotations

import functools

import jax

__all__ = ["training_compiler_options", "sampling_compiler_options"]

_CPU_TRAINING_OPTIONS = (("xla_cpu_experimental_ynn_fusion_type", ""),)
_CPU_SAMPLING_OPTIONS = (("xla_cpu_prefer_vector_width", 512),)


@functools.cache
def _cpu_options(options: tuple) -> dict:
    """``dict(options)`` on the CPU backend when this jaxlib accepts them (an unknown option
    raises "No such compile option"), else ``{}``."""
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1.0, compiler_options=dict(options))(1.0)
    except Exception:  # noqa: BLE001 - any rejection means: compile with XLA's defaults
        return {}
    return dict(options)


def training_compiler_options() -> dict:
    """The options the fit driver compiles its training chunks with."""
    return dict(_cpu_options(_CPU_TRAINING_OPTIONS))


def sampling_compiler_options(extra: tuple = ()) -> dict:
    """The options ``un.sample`` compiles its sampling chunks with, plus a kernel's own
    (``Kernel.compiler_options``)."""
    return dict(_cpu_options(_CPU_SAMPLING_OPTIONS + tuple(extra)))
