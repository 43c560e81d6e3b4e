"""Scaling studies: how the time and the memory of ``un.fit`` grow with the data.

Run from the repository root::

    python benchmarks/scaling.py                          # every study
    python benchmarks/scaling.py --study stderr           # one study
    python benchmarks/scaling.py --study stderr --sizes 20000,50000 --out /tmp/scaling.json
    python benchmarks/scaling.py --study dim --quick --out /tmp/scaling.json
    python benchmarks/scaling.py --study dim --estimators nce   # one estimator again

Each study is one function ``study_<name>(args) -> dict`` registered in ``STUDIES``; its
results go under its name in the JSON file (``benchmarks/results/scaling.json`` by default;
a run of one study keeps the other studies' results already in the file).

Every measurement runs in a fresh Python process (this script with ``--worker``), so that
its peak resident memory (``ru_maxrss`` of that process) is its own and no compilation is
shared between sizes.

Study ``stderr`` — standard errors in row blocks
------------------------------------------------
Score matching (``un.fit(model, x, "sm")`` with its defaults: the score is not linear in (μ,
Λ) jointly, so Adam, then Newton refinement when standard errors are wanted) of
``un.models.gaussian(10)``, a 10-D Gaussian graphical model of 110 parameters (μ and the
precision Λ), on n float32 rows drawn from N(μ, Λ⁻¹) with a chain graph (Λ tridiagonal, 1 on
the diagonal and 0.4 next to it; μ evenly spaced in [-1, 1]). For each n, two processes:
``stderr=False`` and ``stderr=True``. Each process draws the data, then times a first fit
(``cold_s``, compilation included) and a second fit of the same model with another key
(``warm_s``; up to 2·10⁵ rows: above, compilation is a small part of a fit of minutes, and
only the first fit runs), and reports its peak resident memory (``peak_rss_mb``) and the
resident memory before the first fit (``base_rss_mb``: Python, JAX and the data). The
standard-error step's time is ``warm_s(stderr=True) - warm_s(stderr=False)`` (``cold_s``
where there is no warm fit), and ``se_over_fit`` its ratio to the fit's own warm time;
``*_cpu_s`` and ``se_over_fit_cpu`` are the same in CPU time of the process (all its
threads), which a loaded machine disturbs less than wall time. ``max_err_se`` = max over
parameters of |estimate - truth| / standard error, a check that the standard errors describe
the estimate's error.

Targets: peak memory under 2 GB at 2·10⁶ rows, standard-error step under 3× the fit.

Study ``dim`` — a training step's time against d
------------------------------------------------
The MLP energy of ``benchmarks/estimators.py`` (input d, two hidden layers of 128 SiLU units,
a scalar output), minibatches of 256 of n = 2048 standard-normal rows, ``optax.adam(1e-3)``,
trained by ``un.fit`` with exact SM (the Hessian trace by a forward-Laplacian pass), SSM (one
Gaussian projection), DSM (σ = 0.1, no control variate), NCE and PCD (their defaults), for d =
2, 4, ..., 1024, one process per d. Each estimator's fit is called once to compile, then
``repeats`` times with the same model and optimizer (warm), the repeats of the estimators
interleaved. Where a block has at least 200 steps, the fit is also called with half the
steps, and the time per step is the median over repeats of the difference of the two calls'
times over the difference of their steps, which cancels the fit's fixed cost (checks, the
start of the noise or of the chains, the result); otherwise it is the median of the block's
time over its steps (exact SM at d ≥ 8, whose steps dwarf that cost). Reported: the growth
from d = 2 to d = 256, the log-log slope over d ≥ 64, and the d from which SSM's step is
cheaper than exact SM's at every larger d measured. Targets: SSM's step grows at most 3× from
d = 2 to 256; exact SM's at least linearly (at least 128× from d = 2 to 256).

Study ``rows`` — fit time and memory against n
---------------------------------------------
The model and data of the ``stderr`` study, for n = 10³ ... 10⁷ float32 rows, one process
per n: ``un.fit(model, x, "sm", stderr=True, batch_size=1024, num_steps=1000)``, so that the
optimizer stage does the same work at every n and the full-data passes (Newton refinement,
the sandwich) carry the growth. Up to 10⁵ rows the second fit in the process is timed (warm),
above it the only one; peak resident memory as in ``stderr``.

Study ``chains`` — sampling throughput against the number of chains
------------------------------------------------------------------
``un.sample`` with MALA at a fixed step size 0.9 (no warmup, no adaptation) on
``un.models.gaussian(10)``, and Gibbs on ``un.models.ising_chain(100, coupling=0.5,
field=0.1)``, for 1, 4, 16, ..., 4096 chains, one process per sampler: draws per second, all
chains together (a Gibbs draw is one sweep), the median over warm calls of about 2²⁰ (MALA)
or 2¹⁸ (Gibbs) draws, at least 64 and at most 20 000 per chain; InferenceData included, as
``benchmarks/sampling.py`` times it.

Every study writes a markdown table and a log-log plot beside the JSON file
(``scaling_<study>.md``, ``scaling_<study>.png``); ``--quick`` runs tiny sizes of ``dim``,
``rows`` and ``chains`` in seconds, to check the script.

Study ``memmap`` — data larger than memory
------------------------------------------
The same model and data law, ``MEMMAP_ROWS`` = 10⁷ float32 rows written in chunks to a ``.npy``
file (``--tmp``, default the system's temporary folder) and opened with
``np.load(path, mmap_mode="r")``: ``un.fit(model, memmap, "sm", batch_size=1024)`` streams it
(minibatch Adam reading the rows each step draws, then Newton refinement and the sandwich in
host blocks of 2²² values). Three processes: the streamed fit of all rows (peak resident
memory, split at the end into anonymous memory and mapped file pages, which the kernel may
drop at will); and, on the first ``MEMMAP_PREFIX`` = 10⁵ rows, the streamed fit of the
memmap's prefix and the in-memory fit of the same rows as an array with the same key, whose
estimates and standard errors must agree (``max_rel_diff``). ``max_err_se`` as above.

Target: peak resident memory of the streamed 10⁷-row fit under 1.5 GB.

Study ``fullbatch`` — full-batch steps in row blocks
----------------------------------------------------
In-memory SM fits of the same model on ``FULLBATCH_SIZES`` rows, 30 full-batch Adam steps
(``method="optimizer"``, ``stderr=False``), each in its own process with the loss and gradient
summed over row blocks (the default at these sizes) and in one pass over all rows (the
threshold ``unnorm.data_source.FULL_BATCH_BLOCKED_ELEMENTS`` raised past them): peak resident
memory and CPU time.

Speed is measured here and never asserted in the tests.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import machine  # benchmarks/machine.py: this script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "scaling.json"

STDERR_SIZES = (100_000, 1_000_000, 2_000_000)
STDERR_DIM = 10
STDERR_TARGETS = {"peak_rss_mb_at_2e6": 2000.0, "se_over_fit": 3.0}
#: above this many rows a process fits once (cold): compilation is then a small part of a fit
#: of minutes, and a second fit would double the study's time
STDERR_WARM_MAX = 200_000

MEMMAP_ROWS = 10_000_000
MEMMAP_PREFIX = 100_000
MEMMAP_BATCH = 1024
MEMMAP_TARGETS = {"peak_rss_mb": 1500.0}

FULLBATCH_SIZES = (1_000_000, 2_000_000)


def _rss_mb() -> float:
    """Current resident memory of this process (Linux /proc), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_parts_mb() -> dict:
    """Resident memory now, anonymous and file-backed (mapped file pages), in MB."""
    parts = {}
    with open("/proc/self/status") as status:
        for line in status:
            for field in ("RssAnon", "RssFile", "VmRSS"):
                if line.startswith(field + ":"):
                    parts[field] = int(line.split()[1]) / 1024
    return parts


def _ggm_truth(d: int):
    import numpy as np

    precision = np.eye(d) + 0.4 * (np.eye(d, k=1) + np.eye(d, k=-1))
    mean = np.linspace(-1.0, 1.0, d)
    return mean, precision


def _stderr_worker(n: int, stderr: bool) -> dict:
    """One process of the ``stderr`` study: draw n rows, fit twice, report times and memory."""
    import jax
    import numpy as np

    import unnorm as un

    mean, precision = _ggm_truth(STDERR_DIM)
    # x = μ + L⁻ᵀ z with Λ = L Lᵀ has covariance Λ⁻¹; drawn in float32 so that no float64
    # copy of the data inflates the peak
    factor = np.linalg.inv(np.linalg.cholesky(precision)).astype(np.float32)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, STDERR_DIM), dtype=np.float32) @ factor
    x += mean.astype(np.float32)
    model = un.models.gaussian(STDERR_DIM)
    base_rss = _rss_mb()
    times, cpu_times, fitted = [], [], None
    for key in (1, 2) if n <= STDERR_WARM_MAX else (1,):
        start, cpu_start = time.perf_counter(), time.process_time()
        fitted = un.fit(model, x, "sm", key=jax.random.key(key), stderr=stderr,
                        progress_bar=False)
        jax.block_until_ready(fitted.params)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    row = {"n": n, "stderr": stderr, "method": fitted.method, "stages": list(fitted.stages),
           "num_steps": fitted.num_steps,
           "cold_s": times[0], "warm_s": times[1] if len(times) > 1 else None,
           "cold_cpu_s": cpu_times[0], "warm_cpu_s": cpu_times[1] if len(times) > 1 else None,
           "base_rss_mb": base_rss,
           "peak_rss_mb": _peak_rss_mb(), "data_mb": x.nbytes / 2**20}
    if stderr:
        errors = [np.abs(np.asarray(fitted.params[name]) - truth)
                  / np.asarray(fitted.stderr[name])
                  for name, truth in (("mu", mean), ("prec", precision))]
        # the precision's symmetric entries are one parameter each: both copies agree
        row["max_err_se"] = float(max(np.nanmax(e) for e in errors))
    return row


def _write_memmap(path: Path, n: int, chunk: int = 1_000_000) -> None:
    """n float32 rows of the ``stderr`` study's Gaussian into a ``.npy`` file, in chunks (the
    writing process never holds more than one chunk)."""
    import numpy as np

    mean, precision = _ggm_truth(STDERR_DIM)
    factor = np.linalg.inv(np.linalg.cholesky(precision)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, STDERR_DIM))
    for number, start in enumerate(range(0, n, chunk)):
        stop = min(start + chunk, n)
        rng = np.random.default_rng([0, number])
        out[start:stop] = (rng.standard_normal((stop - start, STDERR_DIM), dtype=np.float32)
                           @ factor + mean.astype(np.float32))
    out.flush()
    del out


def _memmap_worker(path: str, rows: int, mode: str) -> dict:
    """One process of the ``memmap`` study: fit the first ``rows`` rows of the file, streamed
    from the memmap (``mode="streamed"``) or loaded as an array (``"memory"``)."""
    import jax
    import numpy as np

    import unnorm as un

    mean, precision = _ggm_truth(STDERR_DIM)
    memmap = np.load(path, mmap_mode="r")
    data = memmap[:rows] if mode == "streamed" else np.array(memmap[:rows])
    model = un.models.gaussian(STDERR_DIM)
    base_rss = _rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    fitted = un.fit(model, data, "sm", key=jax.random.key(1), batch_size=MEMMAP_BATCH,
                    progress_bar=False)
    row = {"rows": rows, "mode": mode, "method": fitted.method, "stages": list(fitted.stages),
           "num_steps": fitted.num_steps, "fit_s": time.perf_counter() - start,
           "fit_cpu_s": time.process_time() - cpu_start, "base_rss_mb": base_rss,
           "peak_rss_mb": _peak_rss_mb(), "rss_end_mb": _rss_parts_mb(),
           "file_mb": memmap.nbytes / 2**20,
           "params": {k: np.asarray(v).tolist() for k, v in fitted.params.items()},
           "stderr": {k: np.asarray(v).tolist() for k, v in fitted.stderr.items()}}
    errors = [np.abs(np.asarray(fitted.params[name]) - truth) / np.asarray(fitted.stderr[name])
              for name, truth in (("mu", mean), ("prec", precision))]
    row["max_err_se"] = float(max(np.nanmax(e) for e in errors))
    return row


def _max_rel_diff(a: dict, b: dict) -> float:
    import numpy as np

    return float(max(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k]))
                            / np.maximum(np.abs(np.asarray(b[k])), 1e-12)) for k in a))


def study_memmap(args) -> dict:
    """Peak memory of an SM fit streamed from a 10⁷-row memmap, and the streamed fit of a
    prefix against the in-memory fit of the same rows."""
    import tempfile

    rows = int(args.sizes) if args.sizes else MEMMAP_ROWS
    folder = Path(args.tmp or tempfile.gettempdir())
    path = folder / f"unnorm_memmap_{rows}.npy"
    start = time.perf_counter()
    _write_memmap(path, rows)
    written_s = time.perf_counter() - start
    try:
        prefix = min(MEMMAP_PREFIX, rows)
        results = [_run_worker("memmap", str(path), str(n), mode)
                   for n, mode in ((prefix, "memory"), (prefix, "streamed"), (rows, "streamed"))]
    finally:
        path.unlink()
    for row in results:
        print(json.dumps({k: v for k, v in row.items() if k not in ("params", "stderr")}),
              flush=True)
    memory, streamed = results[0], results[1]
    comparison = {}
    if "params" in memory and "params" in streamed:
        comparison = {"max_rel_diff_params": _max_rel_diff(streamed["params"], memory["params"]),
                      "max_rel_diff_stderr": _max_rel_diff(streamed["stderr"],
                                                           memory["stderr"])}
        print(json.dumps(comparison))
    return {"model": f"un.models.gaussian({STDERR_DIM})", "estimator": "sm", "dtype": "float32",
            "batch_size": MEMMAP_BATCH, "rows": rows, "prefix": MEMMAP_PREFIX,
            "write_s": written_s, "targets": MEMMAP_TARGETS, "prefix_comparison": comparison,
            "fits": results}


def _fullbatch_worker(n: int, blocked: bool) -> dict:
    """One process of the ``fullbatch`` study."""
    import jax
    import numpy as np

    import unnorm as un
    from unnorm import data_source

    if not blocked:
        data_source.FULL_BATCH_BLOCKED_ELEMENTS = 10**18
    mean, precision = _ggm_truth(STDERR_DIM)
    factor = np.linalg.inv(np.linalg.cholesky(precision)).astype(np.float32)
    x = np.random.default_rng(0).standard_normal((n, STDERR_DIM), dtype=np.float32) @ factor
    start, cpu_start = time.perf_counter(), time.process_time()
    fitted = un.fit(un.models.gaussian(STDERR_DIM), x, "sm", key=jax.random.key(1),
                    num_steps=30, stderr=False, progress_bar=False, method="optimizer")
    return {"n": n, "blocked": blocked, "fit_s": time.perf_counter() - start,
            "fit_cpu_s": time.process_time() - cpu_start, "peak_rss_mb": _peak_rss_mb(),
            "last_loss": float(fitted.loss[-1])}


def study_fullbatch(args) -> dict:
    """Peak memory of full-batch steps in row blocks and in one pass."""
    sizes = (tuple(int(s) for s in args.sizes.split(",")) if args.sizes else FULLBATCH_SIZES)
    rows = []
    for n in sizes:
        for blocked in (False, True):
            rows.append(_run_worker("fullbatch", str(n), str(int(blocked))))
            print(json.dumps(rows[-1]), flush=True)
    return {"model": f"un.models.gaussian({STDERR_DIM})", "estimator": "sm", "steps": 30,
            "rows": rows}


def _run_worker(*args: str) -> dict:
    """Run this script with ``--worker args`` in a fresh process; its JSON line back."""
    done = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True,
                          text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        # a killed process (out of memory) is a result, not a crash of the study
        return {"args": list(args), "returncode": done.returncode,
                "stderr_tail": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def study_stderr(args) -> dict:
    """Fit time with and without standard errors, and peak memory, against n."""
    sizes = (tuple(int(s) for s in args.sizes.split(",")) if args.sizes else STDERR_SIZES)
    rows = []
    for n in sizes:
        pair = {}
        for stderr in (False, True):
            row = _run_worker("stderr", str(n), str(int(stderr)))
            rows.append(row)
            pair[stderr] = row
            print(json.dumps(row), flush=True)
        if all("cold_s" in row for row in pair.values()):
            timed = "warm_s" if pair[False]["warm_s"] is not None else "cold_s"
            se_time = pair[True][timed] - pair[False][timed]
            pair[True]["se_step_s"] = se_time
            pair[True]["se_over_fit"] = se_time / pair[False][timed]
            pair[True]["se_timed_from"] = timed
            cpu = timed.replace("_s", "_cpu_s")
            pair[True]["se_step_cpu_s"] = pair[True][cpu] - pair[False][cpu]
            pair[True]["se_over_fit_cpu"] = pair[True]["se_step_cpu_s"] / pair[False][cpu]
    print(f"\n{'n':>9} {'stderr':>6} {'cold s':>8} {'warm s':>8} {'SE step s':>9} "
          f"{'SE/fit':>6} {'base MB':>8} {'peak MB':>8}")
    for row in rows:
        if "cold_s" not in row:
            print(f"{row['args']}: failed with return code {row['returncode']}")
            continue
        print(f"{row['n']:>9} {str(row['stderr']):>6} {row['cold_s']:>8.2f} "
              f"{row['warm_s'] or float('nan'):>8.2f} "
              f"{row.get('se_step_s', float('nan')):>9.2f} "
              f"{row.get('se_over_fit', float('nan')):>6.2f} {row['base_rss_mb']:>8.0f} "
              f"{row['peak_rss_mb']:>8.0f}")
    return {"model": f"un.models.gaussian({STDERR_DIM})", "estimator": "sm",
            "dtype": "float32", "targets": STDERR_TARGETS, "rows": rows}


# ---------------------------------------------------------------------------------------------
# Sweeps: how a step's time grows with d, a fit's time and memory with n, and sampling
# throughput with the number of chains. Each writes a markdown table and a log-log PNG next to
# the JSON file (scaling_<study>.md, scaling_<study>.png).

#: study "dim": the MLP energy of benchmarks/estimators.py (two hidden SiLU layers)
DIM_CONFIG = {
    "dims": (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    "estimators": ("sm", "ssm", "dsm", "nce", "pcd"),
    "hidden": 128, "batch_size": 256, "n": 2048, "learning_rate": 1e-3, "sigma": 0.1,
    "repeats": 3,
    #: steps per timed block, fixed in advance (steps chosen from a measurement taken under
    #: load carry its noise into the next d): exact SM's step grows about as d, so its blocks
    #: shrink as 800/d steps; the others' stay at 400 (NCE's too, since its noise's density
    #: is evaluated by its whitening matrix), PCD's at 1000 (its fit's fixed cost, the
    #: sampling of the fitted model, is large beside its step)
    "steps": {"sm": 800, "ssm": 400, "dsm": 400, "nce": 400, "pcd": 1000},
    "steps_over_d": ("sm",),
}
DIM_QUICK = {**DIM_CONFIG, "dims": (2, 4), "hidden": 16, "batch_size": 32, "n": 128,
             "repeats": 1, "steps": {"sm": 4, "ssm": 4, "dsm": 4, "nce": 4, "pcd": 4},
             "steps_over_d": ()}
#: the driver compiles its training chunk for min(num_steps, 100) steps: blocks of N and N/2
#: steps share one compilation when N/2 is at least this
DIM_CHUNK = 100
#: SSM's step grows at most 3× from d = 2 to 256; exact SM's at least as d (256/2 = 128×)
DIM_TARGETS = {"ssm_growth_2_to_256_max": 3.0, "sm_growth_2_to_256_min": 128.0}

#: study "rows": the 10-D Gaussian graphical model of the stderr study, a fixed optimizer stage
ROWS_CONFIG = {"sizes": (1_000, 10_000, 100_000, 1_000_000, 10_000_000), "batch_size": 1024,
               "num_steps": 1000, "warm_max": 100_000}
ROWS_QUICK = {**ROWS_CONFIG, "sizes": (1_000, 3_000), "batch_size": 256, "num_steps": 50}

#: study "chains": MALA on N(0, I₁₀) at a fixed step size, Gibbs on a 100-spin Ising chain
CHAINS_CONFIG = {
    "counts": (1, 4, 16, 64, 256, 1024, 4096), "repeats": 3,
    #: draws per call, all chains together (num_samples = draws / chains, clipped)
    "draws": {"mala": 2**20, "gibbs": 2**18}, "min_samples": 64, "max_samples": 20_000,
    "mala_dim": 10, "mala_step_size": 0.9, "ising": {"n": 100, "coupling": 0.5, "field": 0.1},
}
CHAINS_QUICK = {**CHAINS_CONFIG, "counts": (1, 4), "repeats": 1,
                "draws": {"mala": 200, "gibbs": 200}, "min_samples": 50}


def _write_report(args, name: str, table: str, panels: list, xlabel: str, title: str) -> dict:
    """Write the study's markdown ``table`` and a log-log PNG next to the JSON results file.

    ``panels`` is a list of ``(ylabel, {label: (xs, ys)})``, one axes each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.parent.mkdir(parents=True, exist_ok=True)
    table_path = args.out.with_name(f"{args.out.stem}_{name}.md")
    plot_path = args.out.with_name(f"{args.out.stem}_{name}.png")
    table_path.write_text(table)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.4), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels, strict=True):
        for label, (xs, ys) in series.items():
            ax.loglog(xs, ys, marker="o", label=label)
        ax.set_xscale("log", base=2 if max(max(xs) for xs, _ in series.values()) <= 2**16
                      else 10)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(plot_path, dpi=100)
    plt.close(fig)
    print(f"\n{table}\nwritten {table_path} and {plot_path}")
    return {"table": table_path.name, "plot": plot_path.name}


def _loglog_exponent(xs, ys) -> float:
    """Least-squares slope of log y against log x: the power of the growth."""
    import numpy as np

    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _dim_estimator(name: str, cfg: dict):
    import unnorm as un

    return {"sm": lambda: un.estimators.SM(),
            "ssm": lambda: un.estimators.SSM(num_projections=1),
            "dsm": lambda: un.estimators.DSM(sigma=cfg["sigma"], control_variate=False),
            "nce": lambda: un.estimators.NCE(),
            "pcd": lambda: un.estimators.PCD()}[name]()


def _dim_worker(d: int, steps: dict, quick: bool) -> dict:
    """One process of the ``dim`` study: every estimator's warm step time at one d."""
    import warnings

    import jax
    import numpy as np
    import optax
    from estimators import init_mlp, mlp_energy  # the MLP energy estimators.py times

    import unnorm as un

    # the MLP's density need not be proper at its initial weights (PCD's chains drift): the
    # diagnostics are beside the point of a timing
    warnings.simplefilter("ignore")
    cfg = DIM_QUICK if quick else DIM_CONFIG
    params = {"net": [{k: jax.numpy.asarray(v) for k, v in layer.items()}
                      for layer in init_mlp(d, cfg["hidden"])]}
    model = un.Model(mlp_energy, params=params, support=un.supports.real(d))
    data = np.random.default_rng(d).normal(size=(cfg["n"], d)).astype(np.float32)
    optimizer = optax.adam(cfg["learning_rate"])

    def fit(estimator, num_steps: int, seed: int) -> tuple[float, int, float]:
        start = time.perf_counter()
        fitted = un.fit(model, data, estimator=estimator, key=jax.random.key(seed),
                        optimizer=optimizer, num_steps=num_steps,
                        batch_size=cfg["batch_size"], progress_bar=False, stderr=False)
        jax.block_until_ready(fitted.params)
        return time.perf_counter() - start, int(fitted.num_steps), float(fitted.loss[-1])

    cells, rows = {}, []
    for name, num_steps in steps.items():
        estimator = _dim_estimator(name, cfg)
        try:
            first_s, _, _ = fit(estimator, num_steps, 0)  # compiles
        except Exception as err:  # a failed cell is a result, not a crash of the study
            rows.append({"dim": d, "estimator": name, "num_steps": num_steps,
                         "error": f"{type(err).__name__}: {err}"[:500]})
            continue
        cells[name] = {"estimator": estimator, "first_s": first_s, "full": [], "half": []}
    # the repeats of the estimators interleave, so that load from other processes falls on all
    for seed in range(1, cfg["repeats"] + 1):
        for name, cell in cells.items():
            cell["full"].append(fit(cell["estimator"], steps[name], seed))
            if steps[name] // 2 >= DIM_CHUNK:
                cell["half"].append(fit(cell["estimator"], steps[name] // 2, seed))
    for name, cell in cells.items():
        block = [t / n for t, n, _ in cell["full"]]
        row = {"dim": d, "estimator": name, "num_steps": steps[name],
               "repeats": cfg["repeats"], "first_call_s": cell["first_s"],
               "ms_per_step_block": 1e3 * float(np.median(block)),
               "final_loss": cell["full"][-1][2]}
        if cell["half"]:
            # the fit's fixed cost (checks, the chains' or the noise's start, the result)
            # cancels in the difference of two blocks
            slopes = [(tf - th) / (nf - nh) for (tf, nf, _), (th, nh, _)
                      in zip(cell["full"], cell["half"], strict=True)]
            row.update(timing="slope", ms_per_step=1e3 * float(np.median(slopes)),
                       ms_per_step_all=[1e3 * s for s in slopes])
            row["fixed_cost_ms"] = 1e3 * float(np.median(
                [t - n * s for (t, n, _), s in zip(cell["full"], slopes, strict=True)]))
        else:
            row.update(timing="block", ms_per_step=row["ms_per_step_block"],
                       ms_per_step_all=[1e3 * s for s in block])
        rows.append(row)
    return {"dim": d, "rows": rows}


def _dim_steps(name: str, d: int, cfg: dict) -> int:
    """Steps of the timed blocks of one estimator at one d. Two blocks of N and N/2 steps
    share the driver's compilation when N/2 is at least its chunk (DIM_CHUNK); below 2·DIM_CHUNK
    the count stays under DIM_CHUNK, so that the only block size compiles once."""
    steps = cfg["steps"][name]
    if name in cfg["steps_over_d"]:
        steps = max(1, steps // d)
    return steps if steps >= 2 * DIM_CHUNK else min(steps, DIM_CHUNK - 1)


def study_dim(args) -> dict:
    """Warm time per training step of SM, SSM, DSM, NCE and PCD on an MLP energy against d."""
    cfg = DIM_QUICK if args.quick else DIM_CONFIG
    dims = tuple(int(s) for s in args.dims.split(",")) if args.dims else cfg["dims"]
    names = cfg["estimators"]
    if args.estimators:
        names = tuple(s.strip() for s in args.estimators.split(",") if s.strip())
        unknown = sorted(set(names) - set(cfg["estimators"]))
        if unknown or not names:
            raise SystemExit(f"--estimators: unknown {unknown}; choose from "
                             f"{', '.join(cfg['estimators'])}")
    # a run of some estimators keeps the other estimators' rows already in the results file
    rows = [] if not args.estimators or not args.out.exists() else [
        row for row in json.loads(args.out.read_text()).get("dim", {}).get("rows", [])
        if "estimator" in row and row["estimator"] not in names and row["dim"] in dims]
    for d in dims:
        steps = {name: _dim_steps(name, d, cfg) for name in names}
        out = _run_worker("dim", str(d), json.dumps(steps), str(int(args.quick)))
        if "rows" not in out:
            rows.append({"dim": d, **out})
            print(json.dumps(out), flush=True)
            continue
        for row in out["rows"]:
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "ms_per_step_all"}),
                  flush=True)
    return dim_report(args, cfg, dims, rows)


def dim_report(args, cfg: dict, dims, rows: list) -> dict:
    """The ``dim`` study's result: growth factors, log-log slopes, the SM/SSM crossover, and
    its table and plot written."""
    times = {(r["estimator"], r["dim"]): r["ms_per_step"] for r in rows if "ms_per_step" in r}
    lo, hi = (2, 256) if {2, 256} <= set(dims) else (min(dims), max(dims))
    summary = {"growth_from": lo, "growth_to": hi, "growth": {}, "exponent_d_ge_64": {}}
    for name in cfg["estimators"]:
        if (name, lo) in times and (name, hi) in times:
            summary["growth"][name] = times[name, hi] / times[name, lo]
        upper = [d for d in dims if d >= 64 and (name, d) in times]
        if len(upper) >= 2:
            summary["exponent_d_ge_64"][name] = _loglog_exponent(
                upper, [times[name, d] for d in upper])
    # from which d on SSM is cheaper per step than exact SM, at every larger d measured
    crossover = None
    for d in sorted(dims, reverse=True):
        if ("sm", d) in times and ("ssm", d) in times and times["ssm", d] < times["sm", d]:
            crossover = d
        else:
            break
    summary["ssm_cheaper_than_sm_from_d"] = crossover

    header = "| d | " + " | ".join(f"{n.upper()} ms" for n in cfg["estimators"]) + " |"
    lines = [header, "|" + "---|" * (len(cfg["estimators"]) + 1)]
    for d in dims:
        cells = [f"{times[n, d]:.3g}" if (n, d) in times else "failed"
                 for n in cfg["estimators"]]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines.append(f"| growth {lo}→{hi} | " + " | ".join(
        f"{summary['growth'][n]:.3g}×" if n in summary["growth"] else ""
        for n in cfg["estimators"]) + " |")
    lines.append("| exponent, d ≥ 64 | " + " | ".join(
        f"{summary['exponent_d_ge_64'][n]:.2f}" if n in summary["exponent_d_ge_64"] else ""
        for n in cfg["estimators"]) + " |")
    panels = [("ms per step (warm, median)", {
        n.upper(): ([d for d in dims if (n, d) in times], [times[n, d] for d in dims
                                                          if (n, d) in times])
        for n in cfg["estimators"] if any((n, d) in times for d in dims)})]
    report = _write_report(args, "dim", "\n".join(lines) + "\n", panels, "d",
                           f"Training step on an MLP energy (width {cfg['hidden']}, "
                           f"batch {cfg['batch_size']})")
    return {"model": f"MLP energy, 2 hidden layers of {cfg['hidden']} (benchmarks/estimators.py)",
            "config": {k: v for k, v in cfg.items()}, "targets": DIM_TARGETS,
            "summary": summary, "report": report, "rows": rows}


def _gaussian_rows(n: int, d: int):
    """n float32 rows of the chain-graph Gaussian of ``_ggm_truth`` (no float64 copy)."""
    import numpy as np

    mean, precision = _ggm_truth(d)
    factor = np.linalg.inv(np.linalg.cholesky(precision)).astype(np.float32)
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32) @ factor
    x += mean.astype(np.float32)
    return x, mean, precision


def _rows_worker(n: int, quick: bool) -> dict:
    """One process of the ``rows`` study: draw n rows, fit with standard errors, report."""
    import jax
    import numpy as np

    import unnorm as un

    cfg = ROWS_QUICK if quick else ROWS_CONFIG
    x, mean, precision = _gaussian_rows(n, STDERR_DIM)
    model = un.models.gaussian(STDERR_DIM)
    base_rss = _rss_mb()
    times, cpu_times, fitted = [], [], None
    for key in (1, 2) if n <= cfg["warm_max"] else (1,):
        start, cpu_start = time.perf_counter(), time.process_time()
        fitted = un.fit(model, x, "sm", key=jax.random.key(key), stderr=True,
                        batch_size=min(cfg["batch_size"], n), num_steps=cfg["num_steps"],
                        progress_bar=False)
        jax.block_until_ready(fitted.params)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    errors = [np.abs(np.asarray(fitted.params[name]) - truth) / np.asarray(fitted.stderr[name])
              for name, truth in (("mu", mean), ("prec", precision))]
    return {"n": n, "stages": list(fitted.stages), "num_steps": fitted.num_steps,
            "fit_s": times[-1], "timed": "warm" if len(times) > 1 else "cold",
            "cold_s": times[0], "fit_cpu_s": cpu_times[-1], "base_rss_mb": base_rss,
            "peak_rss_mb": _peak_rss_mb(), "data_mb": x.nbytes / 2**20,
            "max_err_se": float(max(np.nanmax(e) for e in errors))}


def study_rows(args) -> dict:
    """Fit time (SM with standard errors) and peak memory of a 10-D GGM against n."""
    cfg = ROWS_QUICK if args.quick else ROWS_CONFIG
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else cfg["sizes"]
    rows = []
    for n in sizes:
        row = _run_worker("rows", str(n), str(int(args.quick)))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows_report(args, cfg, rows)


def rows_report(args, cfg: dict, rows: list) -> dict:
    """The ``rows`` study's result: the growth of time and memory, its table and plot."""
    done = [r for r in rows if "fit_s" in r]
    summary = {}
    if len(done) >= 2:
        ns = [r["n"] for r in done]
        summary = {"time_exponent": _loglog_exponent(ns, [r["fit_s"] for r in done]),
                   "cpu_time_exponent": _loglog_exponent(ns, [r["fit_cpu_s"] for r in done]),
                   "extra_peak_mb_per_million_rows": 1e6 * (
                       (done[-1]["peak_rss_mb"] - done[0]["peak_rss_mb"]) / (ns[-1] - ns[0]))}
    lines = ["| n | fit s | timed | CPU s | peak MB | base MB | data MB | max \\|err\\|/SE |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "fit_s" not in r:
            lines.append(f"| {r['args'][1]} | failed (return code {r['returncode']}) "
                         "| | | | | | |")
            continue
        lines.append(f"| {r['n']:,} | {r['fit_s']:.3g} | {r['timed']} | {r['fit_cpu_s']:.3g} | "
                     f"{r['peak_rss_mb']:.0f} | {r['base_rss_mb']:.0f} | {r['data_mb']:.3g} | "
                     f"{r['max_err_se']:.2f} |")
    panels = [("seconds per fit", {"wall": ([r["n"] for r in done],
                                           [r["fit_s"] for r in done]),
                                   "CPU (all threads)": ([r["n"] for r in done],
                                                         [r["fit_cpu_s"] for r in done])}),
              ("MB", {"peak RSS": ([r["n"] for r in done], [r["peak_rss_mb"] for r in done]),
                      "data": ([r["n"] for r in done], [r["data_mb"] for r in done])})]
    report = _write_report(args, "rows", "\n".join(lines) + "\n", panels, "n (rows)",
                           f"SM with standard errors, un.models.gaussian({STDERR_DIM})")
    return {"model": f"un.models.gaussian({STDERR_DIM})", "estimator": "sm", "stderr": True,
            "dtype": "float32", "config": cfg, "summary": summary, "report": report,
            "rows": rows}


def _chains_worker(sampler: str, counts: list[int], quick: bool) -> dict:
    """One process of the ``chains`` study: warm draws per second of one sampler."""
    import warnings

    import jax
    import numpy as np

    import unnorm as un

    warnings.simplefilter("ignore")  # short runs of few chains: R-hat and ESS warnings
    cfg = CHAINS_QUICK if quick else CHAINS_CONFIG
    if sampler == "mala":
        model = un.models.gaussian(cfg["mala_dim"])
        options = {"step_size": cfg["mala_step_size"], "adapt_step_size": False}
    else:
        model = un.models.ising_chain(**cfg["ising"])
        options = {}
    rows = []
    for chains in counts:
        samples = int(np.clip(cfg["draws"][sampler] // chains, cfg["min_samples"],
                              cfg["max_samples"]))

        def draw(seed, chains=chains, samples=samples):
            start = time.perf_counter()
            idata = un.sample(model, model.params, key=jax.random.key(seed), sampler=sampler,
                              num_chains=chains, num_warmup=0, num_samples=samples,
                              progress_bar=False, warn=False, **options)
            return time.perf_counter() - start, idata

        first_s, _ = draw(0)  # compiles
        timed_runs = [draw(seed) for seed in range(1, cfg["repeats"] + 1)]
        seconds = float(np.median([t for t, _ in timed_runs]))
        idata = timed_runs[-1][1]
        row = {"sampler": sampler, "chains": chains, "num_samples": samples,
               "draws": chains * samples, "first_call_s": first_s, "seconds": seconds,
               "draws_per_s": chains * samples / seconds,
               "seconds_all": [t for t, _ in timed_runs]}
        if sampler == "mala":
            row["acceptance"] = float(idata.sample_stats["acceptance_rate"].mean())
        else:
            # the chain's magnetization per spin: a check that the draws are draws
            row["mean_spin"] = float(idata.posterior["x"].values.mean())
        rows.append(row)
    return {"sampler": sampler, "rows": rows}


def study_chains(args) -> dict:
    """Warm sampling throughput (draws per second, all chains) against the number of chains."""
    cfg = CHAINS_QUICK if args.quick else CHAINS_CONFIG
    counts = (tuple(int(s) for s in args.chains.split(",")) if args.chains
              else cfg["counts"])
    rows = []
    for sampler in ("mala", "gibbs"):
        out = _run_worker("chains", sampler, ",".join(map(str, counts)), str(int(args.quick)))
        for row in out.get("rows", [{"sampler": sampler, **out}]):
            rows.append(row)
            print(json.dumps(row), flush=True)
    return chains_report(args, cfg, counts, rows)


def chains_report(args, cfg: dict, counts, rows: list) -> dict:
    """The ``chains`` study's result: the best throughput per sampler, its table and plot."""
    rate = {(r["sampler"], r["chains"]): r["draws_per_s"] for r in rows if "draws_per_s" in r}
    summary = {}
    for sampler in ("mala", "gibbs"):
        measured = [c for c in counts if (sampler, c) in rate]
        if measured:
            best = max(measured, key=lambda c, s=sampler: rate[s, c])
            summary[sampler] = {"best_chains": best, "best_draws_per_s": rate[sampler, best],
                                "speedup_over_1_chain": rate[sampler, best]
                                / rate.get((sampler, measured[0]), float("nan"))}
    lines = ["| chains | MALA draws/s | MALA acceptance | Gibbs draws/s | Gibbs mean spin |",
             "|---|---|---|---|---|"]
    by_key = {(r["sampler"], r["chains"]): r for r in rows if "draws_per_s" in r}
    for c in counts:
        m, g = by_key.get(("mala", c)), by_key.get(("gibbs", c))
        lines.append(f"| {c} | {m['draws_per_s']:.3g} | {m['acceptance']:.2f} | "
                     if m else f"| {c} | failed | | ")
        lines[-1] += (f"{g['draws_per_s']:.3g} | {g['mean_spin']:.3f} |" if g
                      else "failed | |")
    panels = [("draws per second, all chains (warm)", {
        label: ([c for c in counts if (s, c) in rate], [rate[s, c] for c in counts
                                                        if (s, c) in rate])
        for s, label in (("mala", f"MALA, {cfg['mala_dim']}-D Gaussian"),
                         ("gibbs", f"Gibbs, {cfg['ising']['n']}-spin Ising chain"))
        if any((s, c) in rate for c in counts)})]
    report = _write_report(args, "chains", "\n".join(lines) + "\n", panels, "chains",
                           "un.sample throughput against the number of chains")
    return {"config": cfg, "summary": summary, "report": report, "rows": rows}


STUDIES = {"stderr": study_stderr, "dim": study_dim, "rows": study_rows,
           "chains": study_chains, "memmap": study_memmap, "fullbatch": study_fullbatch}
WORKERS = {"stderr": lambda n, stderr: _stderr_worker(int(n), bool(int(stderr))),
           "dim": lambda d, steps, quick: _dim_worker(int(d), json.loads(steps),
                                                      bool(int(quick))),
           "rows": lambda n, quick: _rows_worker(int(n), bool(int(quick))),
           "chains": lambda sampler, counts, quick: _chains_worker(
               sampler, [int(c) for c in counts.split(",")], bool(int(quick))),
           "memmap": lambda path, rows, mode: _memmap_worker(path, int(rows), mode),
           "fullbatch": lambda n, blocked: _fullbatch_worker(int(n), bool(int(blocked)))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", choices=sorted(STUDIES), action="append",
                        help="the study to run (repeatable); default all")
    parser.add_argument("--sizes", help="comma-separated numbers of rows (stderr, rows); the "
                        "number of rows of the memmap (memmap study)")
    parser.add_argument("--tmp", help="folder for the memmap study's file (default: the "
                        "system's temporary folder)")
    parser.add_argument("--dims", help="comma-separated dimensions (dim study)")
    parser.add_argument("--chains", help="comma-separated numbers of chains (chains study)")
    parser.add_argument("--estimators", help="comma-separated estimators (dim study; the "
                        "others' rows already in the results file are kept)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, a few seconds: checks the dim, rows and chains studies")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        name, *worker_args = args.worker
        print(json.dumps(WORKERS[name](*worker_args)))
        return 0
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["environment"] = machine.environment(
        ("jax", "jaxlib", "numpy", "numpyro", "optax", "unnorm"))
    with open("/proc/loadavg") as loadavg:
        results["environment"]["load_average_start"] = loadavg.read().split()[:3]
    for name in args.study or sorted(STUDIES):
        results[name] = STUDIES[name](args)
    with open("/proc/loadavg") as loadavg:
        results["environment"]["load_average_end"] = loadavg.read().split()[:3]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
