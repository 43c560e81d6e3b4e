"""Scaling studies: how the time and the memory of ``un.fit`` grow with the data.

Run from the repository root::

    python benchmarks/scaling.py                          # every study
    python benchmarks/scaling.py --study stderr           # one study
    python benchmarks/scaling.py --study stderr --sizes 20000,50000 --out /tmp/scaling.json

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


STUDIES = {"stderr": study_stderr, "memmap": study_memmap, "fullbatch": study_fullbatch}
WORKERS = {"stderr": lambda n, stderr: _stderr_worker(int(n), bool(int(stderr))),
           "memmap": lambda path, rows, mode: _memmap_worker(path, int(rows), mode),
           "fullbatch": lambda n, blocked: _fullbatch_worker(int(n), bool(int(blocked)))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", choices=sorted(STUDIES), action="append",
                        help="the study to run (repeatable); default all")
    parser.add_argument("--sizes", help="comma-separated numbers of rows (stderr study); the "
                        "number of rows of the memmap (memmap study)")
    parser.add_argument("--tmp", help="folder for the memmap study's file (default: the "
                        "system's temporary folder)")
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
