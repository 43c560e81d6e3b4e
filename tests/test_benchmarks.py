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
