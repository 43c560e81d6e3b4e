"""``un.sample(devices=...)``: chains split over several devices with ``jax.sharding``.

The CPU backend shows several devices only when ``XLA_FLAGS`` says so before JAX starts, so
the sharded runs happen in a child process started with two host devices. It compares each
sharded run with a single-device run of the same key, and records, on the arrays the compiled
chunks return before anything reaches the host, that the chain axis is really split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import unnorm as un
from unnorm.samplers import devices as chain_devices

_CHILD = textwrap.dedent("""
    import json
    import sys
    import jax, jax.numpy as jnp, numpy as np
    import unnorm as un
    from unnorm.samplers import run

    assert len(jax.devices()) == 2, jax.devices()
    calls = []
    chunk_runner = run._chunk_runner

    def recording_runner(options=()):
        compiled = chunk_runner(options)

        def call(*args, **kwargs):
            states, (draws, stats), finite = compiled(*args, **kwargs)
            # the share of the chain axis one device holds: the draws are (draw, chain, ...),
            # the states' leaves (chain, ...)
            calls.append({
                "draws": draws.sharding.shard_shape(draws.shape)[1] / draws.shape[1],
                "states": max(leaf.sharding.shard_shape(leaf.shape)[0] / leaf.shape[0]
                              for leaf in jax.tree_util.tree_leaves(states)),
                "devices": len(draws.sharding.device_set),
                "chains": draws.shape[1]})
            return states, (draws, stats), finite
        return call

    run._chunk_runner = recording_runner
    gaussian = un.Model(lambda p, x: 0.5 * jnp.sum((x - p["mu"]) ** 2),
                        params={"mu": jnp.array([1.0, -1.0])}, support=un.supports.real(2))
    ising = un.models.ising_chain(6, coupling=0.4)
    out = {}
    for sampler in sys.argv[1:]:
        model = ising if sampler == "gibbs" else gaussian
        # 3 chains over 2 devices: the chain axis is padded to 4. RWMH runs 2 chains, its
        # whole run in one call (the draws leave the devices as that call's own buffers);
        # Gibbs its whole run in one call with the padding to cut; MALA warmup and sampling.
        sizes = {"rwmh": dict(num_chains=2, num_warmup=0, num_samples=4),
                 "gibbs": dict(num_chains=3, num_warmup=0, num_samples=4)}
        size = sizes.get(sampler, dict(num_chains=3, num_warmup=20, num_samples=30))
        kwargs = dict(key=jax.random.key(3), sampler=sampler, progress_bar=False, warn=False,
                      **size)
        calls.clear()
        sharded = un.sample(model, **kwargs)
        sharded_calls = list(calls)
        calls.clear()
        single = un.sample(model, devices=1, chain_method="vectorized", **kwargs)
        x, y = (np.asarray(d.posterior["x"]) for d in (sharded, single))
        out[sampler] = {
            "shape": list(x.shape), "max_diff": float(np.max(np.abs(x - y))),
            "identical": bool(np.array_equal(x, y)),
            "lp_identical": bool(np.array_equal(np.asarray(sharded.sample_stats["lp"]),
                                                np.asarray(single.sample_stats["lp"]))),
            "sharded_calls": sharded_calls, "single_calls": list(calls)}
    print("RESULT " + json.dumps(out))
""")


def _run_child(samplers: list[str]) -> dict:
    """The child's results per sampler: 3 chains on 2 host devices against 3 on one."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
                        ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    # the child finds the programs this process compiled (tests/conftest.py's cache)
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir or ""
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    proc = subprocess.run([sys.executable, "-c", _CHILD, *samplers], env=env,
                          capture_output=True, text=True, timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def two_device_child() -> dict:
    return _run_child(["rwmh", "mala", "gibbs"])


@pytest.mark.parametrize("sampler", ["rwmh", "mala", "gibbs"])
def test_sharded_draws_equal_the_single_device_draws(two_device_child, sampler):
    result = two_device_child[sampler]
    # (chains, draws): the padded fourth chain of MALA's and Gibbs' runs is dropped
    assert result["shape"][:2] == {"rwmh": [2, 4], "mala": [3, 30], "gibbs": [3, 4]}[sampler]
    # each chain's keys are fold_in(key, c) and its steps' fold_in(chain_key, t), whatever
    # the device count; a chain's arithmetic is its own, so even MALA's gradients agree
    assert result["identical"], result["max_diff"]
    assert result["lp_identical"]


@pytest.mark.parametrize("sampler", ["rwmh", "mala", "gibbs"])
def test_sharded_chunks_split_the_chain_axis(two_device_child, sampler):
    chains = 2 if sampler == "rwmh" else 3
    sharded = two_device_child[sampler]["sharded_calls"]
    assert sharded  # warmup and sampling calls
    for call in sharded:
        assert call["devices"] == 2
        assert call["chains"] == (2 if sampler == "rwmh" else 4)  # 3 padded to 4
        assert call["draws"] == 0.5 and call["states"] == 0.5
    for call in two_device_child[sampler]["single_calls"]:
        assert call["devices"] == 1 and call["chains"] == chains and call["draws"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["nuts", "hmc"])
def test_sharded_numpyro_kernels_equal_the_single_device_draws(sampler):
    result = _run_child([sampler])[sampler]
    assert result["identical"], result["max_diff"]
    assert all(call["draws"] == 0.5 and call["states"] == 0.5
               for call in result["sharded_calls"])


def test_check_devices_accepts_none_a_count_and_a_list():
    every = tuple(jax.devices())
    assert chain_devices.check_devices(None) == every
    assert chain_devices.check_devices(1) == every[:1]
    assert chain_devices.check_devices([every[0]]) == every[:1]
    assert chain_devices.check_devices(every[0]) == every[:1]
    assert chain_devices.ChainPlacement(every[:1] * 2, 5).padded_chains == 6


@pytest.mark.parametrize("devices, error, match", [
    (0, ValueError, "devices must be between 1 and"),
    (len(jax.devices()) + 1, ValueError, "devices must be between 1 and"),
    ("cpu", TypeError, "devices must be None"),
    ([], TypeError, "devices must be None"),
    ([0, 1], TypeError, "list of jax.Device"),
    (True, TypeError, "devices must be None"),
])
def test_bad_devices_are_refused(devices, error, match):
    with pytest.raises(error, match=match):
        chain_devices.check_devices(devices)


def test_sample_checks_devices_before_compiling():
    model = un.Model(lambda p, x: 0.5 * jnp.sum(x ** 2), params={}, support=un.supports.real(1))
    device = jax.devices()[0]
    with pytest.raises(ValueError, match="more than once"):
        un.sample(model, key=jax.random.key(0), sampler="rwmh", devices=[device, device])
