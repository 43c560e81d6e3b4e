"""Several devices and several processes: ``un.sample``'s chains and ``un.fit``'s data rows.

The CPU backend shows several devices only when ``XLA_FLAGS`` says so before JAX starts, and
several processes only when each calls ``jax.distributed.initialize``, so the sharded runs
happen in children (``tests/_device_runs.py``), in float64, started together once for the
module: one process with two host devices, which runs each sampler and estimator on both
devices and on one, and two processes joined over 127.0.0.1 (gloo), each holding half the
rows of one global array. Every test reads its part of their results. KSD's fits, AIS and
sampling over two processes run in a second child and pair of their own, started only for
the long studies (``-m slow``).

A sharded run must equal the single-device run of the same inputs: sampled draws bit for
bit (each chain's keys are its own whatever the device count), fits and AIS estimates within
1e-5 relative, standard errors included (the sums differ only in their order, rounding of
about 1e-15 in float64, far below any real difference), except PCD's standard errors, which
come from a sampling of the fitted model that amplifies that rounding (``PCD_STDERR_RTOL``).
The children also record what each device held and summed, so that a run that quietly fell
back to one device fails.
"""

from __future__ import annotations

import _device_runs as runs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un
from unnorm import sharding
from unnorm.samplers import chain_blocks
from unnorm.samplers import devices as chain_devices

#: the samplers whose chains run in fixed-width blocks, and the width: on two devices each
#: block is the single-device program, run on the device that holds its chains
BLOCKED = {"nuts": chain_blocks.TRAJECTORY_BLOCK, "hmc": chain_blocks.TRAJECTORY_BLOCK,
           "mala_blocks": runs.SAMPLER_RUNS["mala_blocks"][1]["chain_block"]}


def _started(extras: bool):
    """The one-process child and the two processes, started at once (they compile their
    programs side by side); stopped when the module's tests are done. With ``extras``, those
    of the long studies: KSD's fits, AIS, and sampling over two processes."""
    started = {"devices": [runs.start_on_two_devices(
                   ("extras",) if extras else (),
                   cache_dir=jax.config.jax_compilation_cache_dir)],
               "processes": runs.start_on_two_processes(extras=extras)}
    yield started
    runs.stop(started["devices"] + started["processes"])


@pytest.fixture(scope="module")
def children():
    yield from _started(extras=False)


@pytest.fixture(scope="module")
def extra_children():
    yield from _started(extras=True)


@pytest.fixture(scope="module")
def two_devices(children) -> dict:
    return runs.results(children["devices"])[0]


@pytest.fixture(scope="module")
def two_processes(children) -> list[dict]:
    return runs.results(children["processes"])


@pytest.fixture(scope="module")
def extra_devices(extra_children) -> dict:
    return runs.results(extra_children["devices"])[0]


@pytest.fixture(scope="module")
def extra_processes(extra_children) -> list[dict]:
    return runs.results(extra_children["processes"])


def _device_fits(request, name: str) -> dict:
    """The two-device child's fits, from the long studies' child for KSD."""
    return request.getfixturevalue("extra_devices" if name == "ksd" else "two_devices")["fits"]


#: KSD's cases run with the long studies (their child of their own)
KSD = pytest.param("ksd", marks=pytest.mark.slow)


#: PCD's standard errors come from a MALA sampling of the fitted model, whose step-size
#: warmup amplifies last-bit differences of θ̂ (the sums over rows and chains add in another
#: order on two devices): from 1e-16 to about 1e-4 in the draws after 500 steps, 7e-4 in the
#: standard errors of the children's fit, and 1.3e-5 for another key before the chains were
#: split. A few percent is the Monte Carlo error of a standard error from 4000 draws; 1e-2 is
#: far above the rounding's effect and far below a fit that went wrong
PCD_STDERR_RTOL = 1e-2


def _assert_close(fitted: dict, single: dict, stderr_rtol: float = 1e-5) -> None:
    np.testing.assert_allclose(fitted["params"], single["params"], rtol=1e-5, atol=0)
    np.testing.assert_allclose(fitted["stderr"], single["stderr"], rtol=stderr_rtol, atol=0)


# ---- sampling on two devices --------------------------------------------------------------------

@pytest.mark.parametrize("sampler", runs.SAMPLERS)
def test_sharded_draws_equal_the_single_device_draws(two_devices, sampler):
    result = two_devices["samplers"][sampler]
    size = runs.SAMPLER_SIZES[sampler]
    # (chains, draws): the padded fourth chain is dropped
    assert result["shape"][:2] == [size["num_chains"], size["num_samples"]]
    assert result["dtype"] == ("int32" if sampler == "gibbs" else "float64")
    # each chain's keys are fold_in(key, c) and its steps' fold_in(chain_key, t), whatever
    # the device count; a chain's arithmetic is its own, so even the gradients agree. NUTS
    # runs its blocks of two chains through the single-device run's width-2 program on
    # either device: the same executable code on the same inputs
    assert result["identical"], result["max_diff"]
    assert result["lp_identical"]


def _assert_split(result: dict, sampler: str) -> None:
    """The sharded run's calls split the chain axis over both devices, and the single-device
    run's calls stay on device 0."""
    chains = runs.SAMPLER_SIZES[sampler]["num_chains"]
    sharded = result["sharded_calls"]
    assert sharded  # warmup and sampling calls
    if sampler in BLOCKED:
        # one call per block, on one device, its states where its draws are: chains 0 and 1
        # on device 0, chain 2 (and its padding copy) on device 1, a block each per chunk
        for call in sharded:
            assert call["chains"] == BLOCKED[sampler], call
            assert len(call["devices"]) == 1 and call["state_devices"] == call["devices"]
            assert call["draws"] == 1.0 and call["states"] == 1.0
        per_device = [sum(call["devices"] == [d] for call in sharded) for d in (0, 1)]
        assert per_device[0] == per_device[1] == len(sharded) // 2, per_device
    else:
        for call in sharded:
            assert call["devices"] == call["state_devices"] == [0, 1]
            assert call["chains"] == chains + chains % 2  # padded to a multiple of 2
            assert call["draws"] == 0.5 and call["states"] == 0.5
    for call in result["single_calls"]:
        # one device: one call over every chain, or one per block of a blocked kernel
        width = BLOCKED.get(sampler, chains)
        assert call["devices"] == call["state_devices"] == [0]
        assert call["chains"] == width and call["draws"] == 1.0


@pytest.mark.parametrize("sampler", runs.SAMPLERS)
def test_sharded_chunks_split_the_chain_axis(two_devices, sampler):
    _assert_split(two_devices["samplers"][sampler], sampler)


@pytest.mark.slow
def test_other_samplers_draw_alike_on_two_devices():
    # MALA asked for blocks (chain_block) runs them as NUTS does, a block per call
    found = runs.results([runs.start_on_two_devices(("hmc", "rwmh", "mala_blocks"))]
                         )[0]["samplers"]
    for sampler, result in found.items():
        assert result["identical"], (sampler, result["max_diff"])
        assert result["lp_identical"], sampler
        _assert_split(result, sampler)


# ---- fitting on two devices ---------------------------------------------------------------------

def _rows(name: str) -> int:
    return next(count for fit, count, _ in runs.FIT_RUNS + runs.EXTRA_FIT_RUNS if fit == name)


@pytest.mark.parametrize("name, stages", [
    ("sm", ["closed form", "sandwich"]),
    ("ssm", ["closed form", "sandwich"]),
    ("nce", ["newton", "sandwich"]),
    ("pcd", ["optimizer", "likelihood sandwich from model draws"]),
    pytest.param("ksd", ["newton", "U-statistic sandwich"], marks=pytest.mark.slow),
])
def test_sharded_fit_equals_the_single_device_fit(request, name, stages):
    count = _rows(name)
    fits = _device_fits(request, name)
    sharded = fits[f"{name}/{count}/sharded"]
    single = fits[f"{name}/{count}/single"]
    assert sharded["stages"] == single["stages"] == stages
    _assert_close(sharded, single, PCD_STDERR_RTOL if name == "pcd" else 1e-5)


@pytest.mark.parametrize("run, stages", [
    ("sm/301/sharded", ["closed form", "sandwich"]),
    ("sm_optimizer/301/sharded", ["optimizer", "newton", "sandwich"]),
    ("sm/301/single", ["closed form", "sandwich"]),
])
def test_score_matching_is_its_exact_solution(two_devices, run, stages):
    # 301 rows: the padding row, weighted 0 in the sums and cut before the optimizer's loss,
    # changes nothing
    fitted = two_devices["fits"][run]
    assert fitted["stages"] == stages
    _assert_close(fitted, runs.score_matching_truth(runs.data()))


@pytest.mark.parametrize("name", ["sm", "sm_optimizer", "ssm", "nce", "pcd", KSD])
def test_sharded_fit_splits_the_rows(request, name):
    count = _rows(name)
    half = -(-count // 2)  # 301 rows: padded to 302, 151 on each device
    sharded = _device_fits(request, name)[f"{name}/{count}/sharded"]
    assert sharded["placed"] == [{"shard": half, "padded": 2 * half, "rows": count,
                                  "devices": 2}]
    # every full-data pass sums the rows of one device: the per-row estimators' blocks, or
    # KSD's rows of pairs against every column; PCD has none (its covariance comes from draws
    # of the fitted model)
    assert sharded["summed_rows"] == ([] if name in ("pcd", "ksd") else [half])
    assert sharded["pair_rows"] == ([half] if name == "ksd" else [])
    # the optimizer's chunk reads the rows where they are
    optimizer = name in ("sm_optimizer", "pcd")
    assert set(sharded["chunk_inputs"]) == ({half} if optimizer else set())
    assert bool(sharded["chunk_inputs"]) == optimizer


@pytest.mark.parametrize("name", ["sm", KSD])
def test_single_device_fit_places_nothing(request, name):
    # devices=1 is the single-device fit: nothing placed, SM's passes over all 301 rows, KSD's
    # pairs read from its kernel matrix
    single = _device_fits(request, name)[f"{name}/{runs.NUM_ROWS}/single"]
    assert single["placed"] == [] and single["chunk_inputs"] == [] and single["pair_rows"] == []
    assert single["summed_rows"] == ([runs.NUM_ROWS] if name == "sm" else [])


def test_sharded_steps_exchange_sums_not_rows(two_devices):
    collectives = two_devices["fits"]["collectives"]["sm_optimizer"]
    assert collectives["all-reduce"] > 0
    assert collectives["all-gather"] == collectives["collective-permute"] == 0
    assert collectives["all-to-all"] == 0


def test_sharded_pcd_splits_its_persistent_chains(two_devices):
    rows = _rows("pcd")
    sharded = two_devices["fits"][f"pcd/{rows}/sharded"]
    single = two_devices["fits"][f"pcd/{rows}/single"]
    # 8 chains over 2 devices: every leaf of the kernels' states (positions, log-densities,
    # gradients, step sizes) half on each device, before and after every compiled chunk
    assert sharded["states"] == [[[0.5], [0.5]]]
    assert single["states"] == []  # no sharded chunk on one device
    # the chains end where one device's end, up to the rounding of the sums over rows and
    # chains; the post-fit sampling (MALA) starts there, on one device in both fits
    np.testing.assert_allclose(sharded["post_fit_starts"], single["post_fit_starts"],
                               rtol=0, atol=1e-12)
    assert sharded["sample_devices"] == single["sample_devices"] == [[0]]


def test_sharded_pcd_steps_exchange_sums_not_chains(two_devices):
    # each device advances its own chains: means over rows and chains are all-reduced, no
    # chain or row is gathered
    collectives = two_devices["fits"]["collectives"]["pcd"]
    assert collectives["all-reduce"] > 0
    assert collectives["all-gather"] == collectives["collective-permute"] == 0
    assert collectives["all-to-all"] == 0


@pytest.mark.slow
def test_mle_samples_its_fitted_model_on_the_fit_devices():
    # MLE's post-fit sampler, NUTS, runs blocks of two chains: on two devices its 4 chains
    # are one block on each, whose draws are one device's bit for bit, so the Monte Carlo
    # MLE and its standard errors are the single-device fit's to rounding
    found = runs.results([runs.start_on_two_devices(("mle",))])[0]["mle"]
    sharded, single = found["sharded"], found["single"]
    assert sharded["stages"] == single["stages"]
    assert "Monte Carlo MLE" in sharded["stages"]
    assert sharded["sample_devices"] == [[0], [1]] and single["sample_devices"] == [[0]]
    _assert_close(sharded, single)


def test_chains_split_only_in_equal_shares(two_devices):
    # 7 chains on 2 devices stay whole on each (padding would change the means over chains);
    # the child splits from 4 chains a device, so that its 8 are split
    assert runs.CHILD_MIN_CHAINS_PER_DEVICE == 4
    assert two_devices["fits"]["split_shares"] == {"7": [1.0], "8": [0.5]}


def test_few_chains_stay_whole_on_each_cpu_device(two_devices):
    # at the library's minimum a few chains are replicated, as a count that is not a multiple
    # is; from the minimum on each CPU device holds its half
    least = 2 * sharding.MIN_CPU_CHAINS_PER_DEVICE
    assert two_devices["fits"]["library_split_shares"] == {
        "8": [1.0], str(least - 2): [1.0], str(least): [0.5]}


def test_streamed_data_is_not_split_over_devices(two_devices):
    error = two_devices["fits"]["streamed_error"]
    assert error.startswith("devices must name one device (or be None) when data is streamed")
    assert "got 2 devices" in error


# ---- AIS on two devices ------------------------------------------------------------------------

def _assert_same_estimate(found: dict, single: dict) -> None:
    for field in ("estimate", "stderr", "ess"):
        np.testing.assert_allclose(found[field], single[field], rtol=1e-5, atol=0)


@pytest.mark.slow
def test_sharded_ais_equals_the_single_device_run(extra_devices):
    sharded, single = extra_devices["ais"]["sharded"], extra_devices["ais"]["single"]
    _assert_same_estimate(sharded, single)
    assert sharded["stderr"] > 0.01  # weights that vary: the comparison has something to see
    # 7 chains and 8 pilot chains: 15, padded to 16, half on each device in every call; one
    # device holds all 15
    assert sharded["calls"] and single["calls"]
    for call in sharded["calls"]:
        assert call["chains"] == 16 and call["keys"] == call["positions"] == 0.5
        assert call["devices"] == [0, 1]
    for call in single["calls"]:
        assert call["chains"] == 15 and call["keys"] == call["positions"] == 1.0
        assert call["devices"] == [0]


@pytest.mark.slow
def test_sharded_gibbs_ais_equals_the_single_device_run():
    # the discrete annealing: the 7 chains padded to 8, half on each device in every call,
    # each swept by the blocked scan; the estimate, its standard error and ESS one device's
    found = runs.results([runs.start_on_two_devices(("ais_gibbs",))])[0]["ais_gibbs"]
    sharded, single = found["sharded"], found["single"]
    _assert_same_estimate(sharded, single)
    assert sharded["stderr"] > 0.01
    assert sharded["calls"] and single["calls"]
    for call in sharded["calls"]:
        assert call["chains"] == 8 and call["positions"] == 0.5 and call["devices"] == [0, 1]
        assert call["blocked"]
    for call in single["calls"]:
        assert call["chains"] == 7 and call["positions"] == 1.0 and call["devices"] == [0]


# ---- fitting over two processes -----------------------------------------------------------------

def test_each_process_holds_half_of_a_global_array(two_processes):
    for result in two_processes:
        assert result["addressable_rows"] == [runs.PROCESS_ROWS]
        assert not result["fully_addressable"]
        # the global array is used where it lives; an array not split over its rows is refused
        first, second = result["errors"]
        assert "devices must be None or the devices of data" in first
        assert "split over its rows along a one-dimensional mesh" in second


@pytest.mark.parametrize("name", [*(name for name in runs.PROCESS_FITS if "/" not in name), KSD])
def test_fit_over_two_processes_equals_the_single_process_fit(request, name):
    processes = request.getfixturevalue("extra_processes" if name == "ksd" else "two_processes")
    first, second = (result[name] for result in processes)
    # every process gets the same result, and it is the fit of all the rows in one process
    # on one device
    assert first["params"] == second["params"] and first["stderr"] == second["stderr"]
    rows = 2 * runs.PROCESS_ROWS
    if name == "sm":
        # the single-device fit is SM's exact solution (test_score_matching_is_its_exact_solution)
        single = {**runs.score_matching_truth(runs.data()[:rows]),
                  "stages": ["closed form", "sandwich"]}
    else:
        single = _device_fits(request, name)[f"{name}/{rows}/single"]
    assert first["stages"] == single["stages"]
    _assert_close(first, single, PCD_STDERR_RTOL if name == "pcd" else 1e-5)
    # PCD's 8 chains: 4 on each process's device after every compiled chunk
    assert first["states"] == second["states"] == ([[0.5]] if name == "pcd" else [])
    # each process summed its own 150 rows in the full-data passes
    for result in (first, second):
        assert result["summed_rows"] == ([] if name in ("pcd", "ksd")
                                         else [runs.PROCESS_ROWS])
        assert result["pair_rows"] == ([runs.PROCESS_ROWS] if name == "ksd" else [])


def test_rows_every_process_holds_whole_are_split_alike(two_processes):
    # a NumPy array of all the rows in every process: the fit splits it over the processes'
    # devices itself, and returns the global array's fit
    for result in two_processes:
        assert result["sm/host"]["params"] == result["sm"]["params"]
        assert result["sm/host"]["stderr"] == result["sm"]["stderr"]


# ---- sampling over two processes ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sampler", runs.SAMPLERS)
def test_sampling_over_two_processes_equals_the_single_device_run(extra_processes, two_devices,
                                                                   sampler):
    first, second = (result["samplers"][sampler] for result in extra_processes)
    single = two_devices["samplers"][sampler]["single"]
    size = runs.SAMPLER_SIZES[sampler]
    assert np.shape(first["x"])[:2] == (size["num_chains"], size["num_samples"])
    # every process gets every chain, and each chain's draws and log-densities are those of
    # one process on one device, bit for bit (JSON reads a float back exactly)
    assert first["x"] == second["x"] == single["x"]
    assert first["lp"] == second["lp"] == single["lp"]
    # and every sample statistic (step sizes, acceptance, divergences, tree sizes)
    assert first["stats"] == second["stats"] == single["stats"]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", runs.SAMPLERS)
def test_each_process_runs_the_chains_of_its_own_device(extra_processes, sampler):
    first, second = (result["samplers"][sampler]["calls"] for result in extra_processes)
    assert first and second
    own = [{d for call in calls for d in call["local_devices"]} for calls in (first, second)]
    # one device each, not the same one
    assert len(own[0]) == len(own[1]) == 1 and own[0] != own[1]
    if sampler in BLOCKED:
        # 3 chains: block 0 (chains 0-1) on process 0's device, block 1 (chain 2 and its
        # padding copy) on process 1's; no process runs the other's block
        for calls in (first, second):
            for call in calls:
                assert call["devices"] == call["state_devices"] == call["local_devices"]
                assert call["chains"] == BLOCKED[sampler] and call["draws"] == 1.0
    else:
        # one partitioned program, called by both processes in step (as many calls, of as
        # many draws), each computing the half of the padded chain axis its device holds
        assert len(first) == len(second)
        both = sorted(own[0] | own[1])
        for call in first + second:
            assert call["devices"] == call["state_devices"] == both
            assert call["chains"] == 4 and call["draws"] == 0.5 and call["states"] == 0.5


@pytest.mark.slow
def test_ais_over_two_processes_equals_the_single_device_run(extra_processes, extra_devices):
    first, second = (result["ais"] for result in extra_processes)
    assert (first["estimate"], first["stderr"]) == (second["estimate"], second["stderr"])
    _assert_same_estimate(first, extra_devices["ais"]["single"])
    # one partitioned program called in step, each process annealing its device's half
    assert len(first["calls"]) == len(second["calls"])
    own = [{d for call in result["calls"] for d in call["local_devices"]}
           for result in (first, second)]
    assert len(own[0]) == len(own[1]) == 1 and own[0] != own[1]
    for call in first["calls"] + second["calls"]:
        assert call["devices"] == sorted(own[0] | own[1])
        assert call["chains"] == 16 and call["positions"] == 0.5


@pytest.mark.slow
def test_a_device_count_naming_another_process_device_is_refused(extra_processes):
    # devices=1 names jax.devices()[0], process 0's device: process 1 has nothing to run
    first, second = (result["samplers"]["count_error"] for result in extra_processes)
    assert first is None
    assert second.startswith("devices must include a device of this process (process 1 of 2")


# ---- arguments ----------------------------------------------------------------------------------

def test_check_devices_accepts_none_a_count_and_a_list():
    every = tuple(jax.devices())
    assert chain_devices.check_devices(None) == every
    assert chain_devices.check_devices(1) == every[:1]
    assert chain_devices.check_devices([every[0]]) == every[:1]
    assert chain_devices.check_devices(every[0]) == every[:1]
    assert chain_devices.ChainPlacement(every[:1] * 2, 5).padded_chains == 6


@pytest.mark.parametrize("num_devices, num_chains, blocks_per_device", [
    (2, 3, [[0], [1]]),           # the test's run: chains 0-1 on device 0, chain 2 on device 1
    (2, 5, [[0, 1], [2]]),        # the last device one block fewer
    (3, 5, [[0], [1], [2]]),
    (4, 10, [[0, 1], [2, 3], [4]]),  # ⌈5 / 4⌉ = 2 blocks a device: the fourth stays idle
    (2, 1, [[0]]),                # one block: one device
])
def test_blocks_split_into_contiguous_runs_per_device(num_devices, num_chains,
                                                      blocks_per_device):
    # a placement's devices are only named here (nothing runs): one device stands for all
    placement = chain_devices.ChainPlacement(tuple(jax.devices()[:1]) * num_devices, num_chains)
    layout = placement.block_layout(chain_blocks.TRAJECTORY_BLOCK)
    assert layout.block == chain_blocks.TRAJECTORY_BLOCK
    assert [list(layout.units_of(g)) for g in range(layout.num_groups)] == blocks_per_device
    blocks = tuple({"chains": np.array([2 * u, 2 * u + 1])} for u in range(layout.num_blocks))
    placed, params = placement.place_blocks(blocks, {"a": np.ones(2)}, layout)
    assert [int(b["chains"][0]) for b in placed] == [2 * u for u in range(layout.num_blocks)]
    assert all(b["chains"].committed for b in placed)
    # one copy of the parameters per device, shared by its blocks
    copies = [params[units[0]] for units in blocks_per_device]
    assert len({id(c) for c in copies}) == len(copies)
    assert all(params[u] is copies[g] for g, units in enumerate(blocks_per_device)
               for u in units)


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


@pytest.mark.parametrize("devices, error, match", [
    (0, ValueError, "devices must be between 1 and"),
    ("cpu", TypeError, "devices must be None"),
])
def test_log_partition_checks_devices(devices, error, match):
    model = un.Model(lambda p, x: 0.5 * jnp.sum(x ** 2), params={}, support=un.supports.real(1))
    with pytest.raises(error, match=match):
        un.log_partition(model, method="ais", key=jax.random.key(0), devices=devices)


def test_sample_checks_devices_before_compiling():
    model = un.Model(lambda p, x: 0.5 * jnp.sum(x ** 2), params={}, support=un.supports.real(1))
    device = jax.devices()[0]
    with pytest.raises(ValueError, match="more than once"):
        un.sample(model, key=jax.random.key(0), sampler="rwmh", devices=[device, device])
