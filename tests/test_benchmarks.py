"""The accelerator benchmark script runs on the CPU and its correctness checks pass; the
CPU-only machinery is switched off on other backends."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unnorm import _xla, threefry
from unnorm.samplers import chain_groups

ROOT = Path(__file__).resolve().parents[1]


def run_gpu_script(out: Path, only: str | None = None) -> dict:
    """``benchmarks/gpu.py --quick`` in a fresh process on the CPU backend; its JSON."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--quick", "--out", str(out)]
    if only:
        cmd += ["--only", only]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())


def assert_rows(result: dict, benchmarks: set[str]) -> None:
    rows = result["results"]
    assert {row["benchmark"] for row in rows} == benchmarks
    assert result["all_checks_passed"] is True
    for row in rows:
        assert row["backend"] == "cpu" and row["device"]
        assert row["check"]["passed"] is True, row
        assert row["rate"] > 0 and row["seconds"] > 0
    assert result["environment"]["backend"] == "cpu"


# the quick runs below are commands benchmarks/README.md documents, each a fresh process that
# compiles its programs anew: they run with the documentation's checks (-m docs)
@pytest.mark.docs
def test_gpu_script_quick_run_on_cpu(tmp_path):
    # a sampler's row (one chain: the smallest ESS behind a check) and an estimator's with
    # keyed noise; every compilation costs seconds, so the slow test below runs the others
    result = run_gpu_script(tmp_path / "gpu.json", only="mala,dsm")
    assert_rows(result, {"mala", "dsm"})


@pytest.mark.slow
def test_gpu_script_quick_run_every_benchmark(tmp_path):
    result = run_gpu_script(tmp_path / "gpu.json")
    assert_rows(result, {"nuts", "mala", "gibbs", "sm", "dsm", "ssm", "nce"})


@pytest.fixture
def accelerator_backend(monkeypatch):
    """``jax.default_backend()`` answers "gpu"; the cached compile options are recomputed."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    _xla._cpu_options.cache_clear()
    yield
    _xla._cpu_options.cache_clear()


def test_cpu_only_paths_are_off_on_an_accelerator(accelerator_backend):
    # one group of chains, no thread pool
    layout = chain_groups.choose_layout(8, "parallel", cores=4)
    assert layout.num_groups == 1 and chain_groups.executor(layout) is None
    # no CPU compile options
    assert _xla.training_compiler_options() == {}
    assert _xla.sampling_compiler_options((("xla_backend_optimization_level", 0),)) == {}
    # jax.random's own generator, with the same draws
    key = jax.random.key(5)
    jaxpr = str(jax.make_jaxpr(lambda k: threefry.uniform(k, (6,), partitionable=False))(key))
    assert "random_bits" in jaxpr
    with jax.threefry_partitionable(False):
        expected = jax.random.uniform(key, (6,))
    np.testing.assert_array_equal(threefry.uniform(key, (6,), partitionable=False), expected)
    np.testing.assert_array_equal(threefry.normal(key, (3,), jnp.float32),
                                  jax.random.normal(key, (3,)))


def test_cpu_paths_are_on_on_the_cpu():
    assert chain_groups.choose_layout(8, "parallel", cores=4).num_groups == 4
    jaxpr = str(jax.make_jaxpr(lambda k: threefry.uniform(k, (6,)))(jax.random.key(5)))
    assert "random_bits" not in jaxpr


def run_scaling_quick(study: str, out: Path) -> dict:
    """``benchmarks/scaling.py --study STUDY --quick`` in a fresh process; that study's
    results, with the paths of its table and plot made absolute."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--study", study, "--quick",
           "--out", str(out)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())[study]
    table = (out.parent / result["report"]["table"]).read_text()
    assert table.startswith("| ") and "failed" not in table, table
    assert (out.parent / result["report"]["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return result


def assert_finite_positive(row: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = row[key]
        assert isinstance(value, (int, float)) and np.isfinite(value) and value > 0, (key, row)


@pytest.mark.docs
def test_scaling_chains_quick(tmp_path):
    result = run_scaling_quick("chains", tmp_path / "scaling.json")
    rows = result["rows"]
    assert [(r["sampler"], r["chains"]) for r in rows] == [
        ("mala", 1), ("mala", 4), ("gibbs", 1), ("gibbs", 4)]
    for row in rows:
        assert_finite_positive(row, ("num_samples", "draws", "seconds", "first_call_s",
                                     "draws_per_s"))
        assert row["draws"] == row["chains"] * row["num_samples"]
        if row["sampler"] == "mala":
            assert 0 < row["acceptance"] <= 1
        else:
            assert -1 <= row["mean_spin"] <= 1
    for sampler in ("mala", "gibbs"):
        assert_finite_positive(result["summary"][sampler], ("best_draws_per_s",
                                                            "speedup_over_1_chain"))


@pytest.mark.slow
def test_scaling_dim_quick(tmp_path):
    result = run_scaling_quick("dim", tmp_path / "scaling.json")
    estimators = ("sm", "ssm", "dsm", "nce", "pcd")
    assert sorted((r["dim"], r["estimator"]) for r in result["rows"]) == sorted(
        (d, e) for d in (2, 4) for e in estimators)
    for row in result["rows"]:
        assert_finite_positive(row, ("ms_per_step", "ms_per_step_block", "first_call_s",
                                     "num_steps"))
        assert np.isfinite(row["final_loss"])
    assert sorted(result["summary"]["growth"]) == sorted(estimators)
    assert_finite_positive(result["summary"]["growth"], estimators)


@pytest.mark.slow
def test_scaling_rows_quick(tmp_path):
    result = run_scaling_quick("rows", tmp_path / "scaling.json")
    assert [r["n"] for r in result["rows"]] == [1000, 3000]
    for row in result["rows"]:
        assert_finite_positive(row, ("fit_s", "cold_s", "fit_cpu_s", "peak_rss_mb",
                                     "base_rss_mb", "data_mb", "max_err_se"))
        assert row["stages"][-1] == "sandwich" and row["peak_rss_mb"] >= row["base_rss_mb"]
    assert np.isfinite(result["summary"]["time_exponent"])
