"""``un.fit(devices=...)``: data rows split over several devices, and over several processes.

The CPU backend shows several devices only when ``XLA_FLAGS`` says so before JAX starts, and
several processes only when each calls ``jax.distributed.initialize``, so the sharded fits run
in child processes, in float64: a child with two host devices, and two children joined over
127.0.0.1 (gloo collectives), each holding half the rows of one global array. Each compares
its fits with a single-device fit of the same data and key (the sums differ only in their
order: 1e-5 relative is far above float64 rounding and far below any real difference), and
records the rows each device really holds and sums. The default tests compare score matching
with its exact solution instead, computed here with NumPy, which the single-device fit equals
to rounding, and spare the children a second set of compilations.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un

# the model, data and fits both children run. The energy is affine in θ = (a, b), so SM and
# SSM solve in closed form and NCE starts with Newton; PCD runs the optimizer on the rows.
_FITS = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np
    import unnorm as un
    from unnorm import sharding, solvers

    MODEL = un.Model(lambda p, x: 0.5 * p["a"] * jnp.sum(x ** 2) - jnp.dot(p["b"], x),
                     params={"a": 1.0, "b": jnp.zeros(2)},
                     constraints={"a": un.constraints.positive}, support=un.supports.real(2))
    DATA = np.random.default_rng(0).normal([0.5, -0.5], 0.8, size=(301, 2))
    FITS = {"sm": ("sm", {}), "ssm": (un.estimators.SSM(), {}), "nce": ("nce", {}),
            "sm_optimizer": ("sm", {"method": "optimizer", "num_steps": 40}),
            "pcd": (un.estimators.PCD(k=2, num_chains=16), {"num_steps": 150})}

    def fit(name, data, **kwargs):
        estimator, options = FITS[name]
        result = un.fit(MODEL, data, estimator, key=jax.random.key(1), progress_bar=False,
                        **options, **kwargs)

        def flat(tree):
            return [float(v) for _, leaf in sorted(tree.items()) for v in np.ravel(leaf)]
        return {"params": flat(result.params), "stderr": flat(result.stderr),
                "stages": list(result.stages)}

    # the rows each full-data pass sums where it runs (inside shard_map: one device's)
    summed_rows = []
    derivative_sums = solvers.derivative_sums

    def recording_sums(flat, template, data, *args, **kwargs):
        summed_rows.append(int(data.shape[0]))
        return derivative_sums(flat, template, data, *args, **kwargs)

    solvers.derivative_sums = recording_sums
""")

_TWO_DEVICES = _FITS + textwrap.dedent("""
    assert len(jax.devices()) == 2, jax.devices()
    placed, chunk_inputs = [], []
    place_rows, replicated_jit = sharding.place_rows, sharding.replicated_jit

    def recording_place(*args, **kwargs):
        rows = place_rows(*args, **kwargs)
        placed.append({"shard": rows.array.sharding.shard_shape(rows.array.shape)[0],
                       "padded": rows.array.shape[0], "rows": rows.num_rows,
                       "devices": len(rows.array.sharding.device_set)})
        return rows

    collectives = {}

    def recording_jit(*args, **kwargs):
        compiled = replicated_jit(*args, **kwargs)

        def call(train, data, *rest, **options):
            chunk_inputs.append(data.sharding.shard_shape(data.shape)[0])
            if not collectives:
                # what the devices exchange in a chunk of steps: gradients' partial sums,
                # never rows
                text = compiled.lower(train, data, *rest, **options).compile().as_text()
                collectives.update({op: text.count(op + "(") + text.count(op + "-start(")
                                    for op in ("all-gather", "all-reduce",
                                               "collective-permute", "all-to-all")})
            return compiled(train, data, *rest, **options)
        return call

    sharding.place_rows, sharding.replicated_jit = recording_place, recording_jit
    out = {}
    for request in sys.argv[1:]:
        # "<name>+single": also the single-device fit
        name, _, single = request.partition("+")
        for label, devices in (("sharded", None), ("single", 1))[:2 if single else 1]:
            placed.clear(), chunk_inputs.clear(), summed_rows.clear()
            out[name, label] = {**fit(name, DATA, devices=devices), "placed": list(placed),
                                "chunk_inputs": list(chunk_inputs),
                                "summed_rows": sorted(set(summed_rows))}
    out = {f"{name}/{label}": v for (name, label), v in out.items()}

    class Rows:
        # a row source: streamed in host blocks, on one device
        def __len__(self):
            return len(DATA)

        def __getitem__(self, rows):
            return DATA[rows]

    try:
        un.fit(MODEL, Rows(), "sm", key=jax.random.key(1), devices=2, progress_bar=False)
        streamed_error = None
    except ValueError as err:
        streamed_error = str(err)
    print("RESULT " + json.dumps({**out, "collectives": collectives,
                                  "streamed_error": streamed_error}))
""")

_PROCESS = _FITS + textwrap.dedent("""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    # each process holds rows [150 i, 150 (i + 1)) of the first 300
    process, count = jax.process_index(), jax.process_count()
    assert count == 2 and len(jax.devices()) == 2, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    data = DATA[:300]
    local = data[150 * process:150 * (process + 1)]
    rows = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
    out = {"addressable_rows": [s.data.shape[0] for s in rows.addressable_shards],
           "fully_addressable": rows.is_fully_addressable, "errors": []}
    # the global array is used where it lives: a device count cannot split it otherwise,
    # and an array that is not split over its rows is refused
    copies = jax.make_array_from_process_local_data(NamedSharding(mesh, P()), data)
    for bad, kwargs in ((rows, {"devices": 1}), (copies, {})):
        try:
            fit("sm", bad, **kwargs)
        except ValueError as err:
            out["errors"].append(str(err))
    for request in sys.argv[1:]:
        # "<name>+single": process 0 also fits on one device; "<name>/host": every process
        # passes all the rows as a NumPy array, which the fit splits over their devices itself
        name, _, single = request.partition("+")
        estimator, _, host = name.partition("/")
        summed_rows.clear()
        out[name] = {**fit(estimator, data if host else rows),
                     "summed_rows": sorted(set(summed_rows))}
        if process == 0 and single:
            out[name]["single"] = fit(estimator, data, devices=[jax.local_devices()[0]])
    print("RESULT " + json.dumps(out))
""")


def _child_env(device_count: int, cache: bool) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={device_count}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    if not cache:
        # two processes compiling the same programs would write the same cache files at once
        return env
    # the child finds the programs this process compiled (tests/conftest.py's cache)
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir or ""
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return env


def _result(proc_stdout: str, returncode: int, stderr: str) -> dict:
    lines = [line for line in proc_stdout.splitlines() if line.startswith("RESULT ")]
    assert returncode == 0 and lines, stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _two_devices(fits: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES, *fits],
                          env=_child_env(2, cache=True), capture_output=True, text=True,
                          timeout=300)
    return _result(proc.stdout, proc.returncode, proc.stderr)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_processes(fits: list[str], timeout: float = 300) -> list[dict]:
    """The two processes' results; each process initializes jax.distributed before anything
    else runs on JAX."""
    port = _free_port()
    start = ("import jax, sys\n"
             "jax.config.update('jax_cpu_collectives_implementation', 'gloo')\n"
             f"jax.distributed.initialize(coordinator_address='127.0.0.1:{port}', "
             "num_processes=2, process_id=int(sys.argv.pop(1)))\n")
    procs = [subprocess.Popen([sys.executable, "-c", start + _PROCESS, str(i), *fits],
                              env=_child_env(1, cache=False), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            outputs.append((stdout, proc.returncode, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [_result(*output) for output in outputs]


def _assert_close(fitted: dict, single: dict) -> None:
    for field in ("params", "stderr"):
        np.testing.assert_allclose(fitted[field], single[field], rtol=1e-5, atol=0)


def _score_matching_truth(x: np.ndarray) -> dict:
    """SM's estimate and sandwich standard errors for the children's energy
    ``E = a|x|²/2 - b·x``, whose score ``s = b - a x`` is linear in θ = (a, b): the terms are
    ``ℓ_i = |s_i|²/2 + div s_i = |s_i|²/2 - d a`` (Hyvärinen 2005), a quadratic whose
    minimizer is one linear solve, and ``H⁻¹JH⁻¹/n`` comes from their exact derivatives."""
    n, d = x.shape
    sq = np.sum(x ** 2, axis=1)
    # ∇²ℓ_i in (a, b): [[|x|², -xᵀ], [-x, I]]; ∇ℓ_i at 0: (-d, 0)
    hessian = np.block([[np.mean(sq)[None, None], -x.mean(axis=0)[None, :]],
                        [-x.mean(axis=0)[:, None], np.eye(d)]])
    theta = np.linalg.solve(hessian, np.r_[d, np.zeros(d)])
    a, b = theta[0], theta[1:]
    s = b - a * x
    grads = np.column_stack([-np.sum(s * x, axis=1) - d, s])
    inverse = np.linalg.inv(hessian)
    covariance = inverse @ (grads.T @ grads / n) @ inverse / n
    return {"params": theta.tolist(), "stderr": np.sqrt(np.diag(covariance)).tolist()}


_DATA = np.random.default_rng(0).normal([0.5, -0.5], 0.8, size=(301, 2))  # the children's


def test_score_matching_truth_is_the_fit_on_an_explicit_device():
    # the NumPy solution against un.fit on one device named in a list, where the data are
    # placed (float32 here: 1e-4)
    model = un.Model(lambda p, x: 0.5 * p["a"] * jnp.sum(x ** 2) - jnp.dot(p["b"], x),
                     params={"a": 1.0, "b": jnp.zeros(2)},
                     constraints={"a": un.constraints.positive}, support=un.supports.real(2))
    fitted = un.fit(model, _DATA, key=jax.random.key(1), progress_bar=False,
                    devices=jax.devices()[:1])
    assert fitted.stages == ("closed form", "sandwich")
    truth = _score_matching_truth(_DATA)
    np.testing.assert_allclose(np.r_[fitted.params["a"], fitted.params["b"]], truth["params"],
                               rtol=1e-4)
    np.testing.assert_allclose(np.r_[fitted.stderr["a"], fitted.stderr["b"]], truth["stderr"],
                               rtol=1e-4)


# ---- several devices in one process -------------------------------------------------------------

@pytest.fixture(scope="module")
def two_device_child() -> dict:
    return _two_devices(["sm+single", "sm_optimizer"])


@pytest.mark.parametrize("name, stages", [
    ("sm", ["closed form", "sandwich"]),
    ("sm_optimizer", ["optimizer", "newton", "sandwich"]),
])
def test_sharded_fit_is_the_single_device_fit(two_device_child, name, stages):
    sharded = two_device_child[f"{name}/sharded"]
    assert sharded["stages"] == stages
    _assert_close(sharded, _score_matching_truth(_DATA))


def test_sharded_fit_splits_the_rows(two_device_child):
    # 301 rows padded to 302, 151 on each of the two devices; every full-data pass sums the
    # 151 rows of one device, and the optimizer's chunk reads them where they are
    for name in ("sm", "sm_optimizer"):
        sharded = two_device_child[f"{name}/sharded"]
        assert sharded["placed"] == [{"shard": 151, "padded": 302, "rows": 301, "devices": 2}]
        assert sharded["summed_rows"] == [151]
    chunk_inputs = two_device_child["sm_optimizer/sharded"]["chunk_inputs"]
    assert chunk_inputs and set(chunk_inputs) == {151}
    collectives = two_device_child["collectives"]
    assert collectives["all-reduce"] > 0
    assert collectives["all-gather"] == collectives["collective-permute"] == 0
    assert collectives["all-to-all"] == 0
    assert two_device_child["sm/sharded"]["chunk_inputs"] == []  # closed form: no optimizer
    # devices=1 is the single-device fit: nothing placed, every pass over all 301 rows
    single = two_device_child["sm/single"]
    assert single["placed"] == [] and single["chunk_inputs"] == []
    assert single["summed_rows"] == [301]
    _assert_close(single, _score_matching_truth(_DATA))


def test_streamed_data_is_not_split_over_devices(two_device_child):
    assert two_device_child["streamed_error"].startswith(
        "devices must name one device (or be None) when data is streamed")
    assert "got 2 devices" in two_device_child["streamed_error"]


@pytest.mark.slow
def test_other_sharded_fits_equal_the_single_device_fits():
    names = ["ssm", "nce", "pcd"]
    result = _two_devices([f"{name}+single" for name in names])
    for name in names:
        sharded, single = result[f"{name}/sharded"], result[f"{name}/single"]
        assert sharded["stages"] == single["stages"]
        _assert_close(sharded, single)
        assert sharded["placed"][0]["shard"] == 151
    assert result["pcd/sharded"]["chunk_inputs"]
    assert set(result["pcd/sharded"]["chunk_inputs"]) == {151}


# ---- several processes --------------------------------------------------------------------------

def _check_processes(results: list[dict], names: list[str], truth=None) -> None:
    first, second = results
    for result in results:
        assert result["addressable_rows"] == [150] and not result["fully_addressable"]
    for name in names:
        # every process gets the same result, and it is the single-process fit
        assert first[name]["params"] == second[name]["params"]
        assert first[name]["stderr"] == second[name]["stderr"]
        if truth is None:
            assert first[name]["stages"] == first[name]["single"]["stages"]
        _assert_close(first[name], truth or first[name]["single"])
        # each process summed its own 150 rows in the distributed fit's full-data passes
        # (PCD has none: its covariance comes from draws of the fitted model); with the
        # whole array on every process the fit places it, 300 rows, 150 a device
        summed = [] if name == "pcd" else [150]
        assert first[name]["summed_rows"] == second[name]["summed_rows"] == summed


def test_fit_over_two_processes_equals_the_single_process_fit():
    results = _two_processes(["sm"])
    assert results[0]["sm"]["stages"] == ["closed form", "sandwich"]
    _check_processes(results, ["sm"], truth=_score_matching_truth(_DATA[:300]))
    errors = results[0]["errors"]
    assert len(errors) == 2
    assert "devices must be None or the devices of data" in errors[0]
    assert "split over its rows along a one-dimensional mesh" in errors[1]


@pytest.mark.slow
def test_other_estimators_over_two_processes_equal_the_single_process_fits():
    names = ["ssm", "nce", "sm_optimizer", "pcd", "sm/host"]
    results = _two_processes([f"{name}+single" for name in names], timeout=900)
    _check_processes(results, names)


# ---- arguments ----------------------------------------------------------------------------------

_MODEL = un.Model(lambda p, x: 0.5 * p["a"] * jnp.sum(x ** 2), params={"a": 1.0},
                  constraints={"a": un.constraints.positive}, support=un.supports.real(1))


@pytest.mark.parametrize("devices, error, match", [
    (0, ValueError, "devices must be between 1 and"),
    (len(jax.devices()) + 1, ValueError, "devices must be between 1 and"),
    ("cpu", TypeError, "devices must be None"),
    ([0], TypeError, "list of jax.Device"),
])
def test_fit_checks_devices_before_compiling(devices, error, match):
    with pytest.raises(error, match=match):
        un.fit(_MODEL, np.ones((4, 1)), key=jax.random.key(0), devices=devices)
