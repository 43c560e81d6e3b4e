"""The child processes of the device tests, and the calls that start them.

The CPU backend shows several devices only when ``XLA_FLAGS`` says so before JAX starts, and
several processes only when each calls ``jax.distributed.initialize``, so the sharded runs of
``tests/test_devices.py`` and ``tests/test_fit_devices.py`` happen in children, in float64:

* ``python _device_runs.py devices``: one process with two host devices runs the default
  run's samplers and estimators twice, on both devices and on one (``devices=1``), and records
  what each device really held and summed; ``devices extras`` runs KSD's fits and an AIS run
  of ``un.log_partition`` the same way (the long studies, ``-m slow``);
* ``python _device_runs.py process <id> <port>``, twice: two processes joined over 127.0.0.1
  (gloo collectives), each holding half the rows of one global array, fit the default run's
  estimators; ``process <id> <port> extras`` fits KSD instead, then samples with the default
  run's samplers and runs AIS over both processes' devices (``-m slow``). Process 1 paces its
  compiled loops to fewer steps a call than process 0 would (:func:`_uneven_paces`): every
  paced loop must follow process 0's counts.

One child (one pair) serves all the tests of a file: a JAX start and the compilation of each
program happen once. The sizes are the smallest that reach every code path (an odd row count
for the padding, a few chains and steps): the comparison is of identical inputs on one device
and on two, which needs no statistical power. Each child prints one ``RESULT <json>`` line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from typing import Any, NamedTuple

_SCRIPT = os.path.abspath(__file__)
#: the children's data: 301 rows, so that two devices hold 151 each, one of them a copy of
#: the last (padding); the processes split the first 300
NUM_ROWS = 301
#: each process holds rows [150 i, 150 (i + 1)) of the first 300
PROCESS_ROWS = 150
#: the persistent chains per CPU device from which the children split them
#: (``unnorm.sharding.MIN_CPU_CHAINS_PER_DEVICE``, lowered from the library's minimum): the
#: children's PCD runs 8 chains, 4 a device, so that the split path costs little to compare
CHILD_MIN_CHAINS_PER_DEVICE = 4


def _lower_split_minimum() -> int:
    """Lower the CPU minimum of chains per device to :data:`CHILD_MIN_CHAINS_PER_DEVICE` for the
    rest of the child; returns the library's own."""
    from unnorm import sharding

    library = sharding.MIN_CPU_CHAINS_PER_DEVICE
    sharding.MIN_CPU_CHAINS_PER_DEVICE = CHILD_MIN_CHAINS_PER_DEVICE
    return library


# ---- what both kinds of children fit ------------------------------------------------------------

def _model():
    import jax.numpy as jnp

    import unnorm as un

    # the energy is affine in θ = (a, b): SM and SSM solve in closed form, NCE and KSD start
    # with Newton; PCD runs the optimizer on the rows
    return un.Model(lambda p, x: 0.5 * p["a"] * jnp.sum(x ** 2) - jnp.dot(p["b"], x),
                    params={"a": 1.0, "b": jnp.zeros(2)},
                    constraints={"a": un.constraints.positive}, support=un.supports.real(2))


def data():
    import numpy as np

    return np.random.default_rng(0).normal([0.5, -0.5], 0.8, size=(NUM_ROWS, 2))


def _fits():
    import optax

    import unnorm as un

    return {"sm": ("sm", {}), "sm_optimizer": ("sm", {"method": "optimizer", "num_steps": 40}),
            "ssm": (un.estimators.SSM(), {}), "nce": ("nce", {}),
            # a constant step size: with the default's decay over the second half, the
            # sharded and single fits' averaged iterates still agreed to 1e-16 but one MALA
            # accept decision of the persistent chains flipped on that difference, and the
            # draws behind the standard errors parted by 3e-3
            "pcd": (un.estimators.PCD(k=2, num_chains=8),
                    {"num_steps": 30, "optimizer": optax.adam(1e-2)}),
            "ksd": ("ksd", {})}


def _fit(model, name: str, rows, **kwargs) -> dict:
    import jax
    import numpy as np

    import unnorm as un

    estimator, options = _fits()[name]
    result = un.fit(model, rows, estimator, key=jax.random.key(1), progress_bar=False,
                    **options, **kwargs)

    def flat(tree):
        return [float(v) for _, leaf in sorted(tree.items()) for v in np.ravel(leaf)]
    return {"params": flat(result.params), "stderr": flat(result.stderr),
            "stages": list(result.stages)}


class _Recorder:
    """The rows each full-data pass sums where it runs (inside ``shard_map``: one device's):
    the per-row estimators' blocks (``solvers.derivative_sums``) and KSD's rows of pairs
    (``estimators.stein._pair_sums``), recorded while they are traced."""

    def __init__(self):
        from unnorm import solvers
        from unnorm.estimators import stein

        self.summed_rows: list[int] = []
        self.pair_rows: list[int] = []
        derivative_sums, pair_sums = solvers.derivative_sums, stein._pair_sums

        def recording_sums(flat, template, rows, *args, **kwargs):
            self.summed_rows.append(int(rows.shape[0]))
            return derivative_sums(flat, template, rows, *args, **kwargs)

        def recording_pairs(flat, template, rows, *args, **kwargs):
            self.pair_rows.append(int(rows.shape[0]))
            return pair_sums(flat, template, rows, *args, **kwargs)

        solvers.derivative_sums, stein._pair_sums = recording_sums, recording_pairs

    def clear(self):
        self.summed_rows.clear(), self.pair_rows.clear()

    def rows(self) -> dict:
        return {"summed_rows": sorted(set(self.summed_rows)),
                "pair_rows": sorted(set(self.pair_rows))}


# ---- one process, two devices -------------------------------------------------------------------

#: the samplers' runs: 3 chains over 2 devices pad the chain axis to 4 (Gibbs, MALA, NUTS);
#: RWMH's 2 chains fill it, its whole run one call whose draws leave as that call's buffers
SAMPLER_SIZES = {"rwmh": dict(num_chains=2, num_warmup=0, num_samples=4),
                 "gibbs": dict(num_chains=3, num_warmup=0, num_samples=4),
                 "mala": dict(num_chains=3, num_warmup=10, num_samples=10),
                 "nuts": dict(num_chains=3, num_warmup=10, num_samples=10),
                 "hmc": dict(num_chains=3, num_warmup=10, num_samples=10),
                 "mala_blocks": dict(num_chains=3, num_warmup=10, num_samples=10)}
#: runs of a sampler with options, by the name the runs are listed under: MALA in blocks of 2
#: chains, asked for with chain_block
SAMPLER_RUNS = {"mala_blocks": ("mala", {"chain_block": 2})}
#: the default run's samplers: a discrete kernel, one of unnorm's gradient kernels, NumPyro's
SAMPLERS = ("gibbs", "mala", "nuts")
#: (fit, rows, devices) of the one-process child: "sharded" on both devices, "single" on one.
#: On 301 rows SM (closed form and optimizer, against its exact solution) and KSD meet the
#: padding; SSM, NCE and PCD fit the 300 rows the two processes split, so that their
#: single-device fits are also the references of the processes' fits, as KSD's single-device
#: fit of those rows is (SM's reference there is its exact solution)
FIT_RUNS = (("sm", NUM_ROWS, "sharded"), ("sm", NUM_ROWS, "single"),
            ("sm_optimizer", NUM_ROWS, "sharded"),
            *((name, 2 * PROCESS_ROWS, label) for name in ("ssm", "nce", "pcd")
              for label in ("sharded", "single")))
#: the fits of ``devices extras`` (``-m slow``): KSD's pairs of rows on both devices and on
#: one, and on the processes' 300 rows on one device, the reference of their KSD fit
EXTRA_FIT_RUNS = (("ksd", NUM_ROWS, "sharded"), ("ksd", NUM_ROWS, "single"),
                  ("ksd", 2 * PROCESS_ROWS, "single"))


def _sampler_models():
    import jax.numpy as jnp

    import unnorm as un

    gaussian = un.Model(lambda p, x: 0.5 * jnp.sum((x - p["mu"]) ** 2),
                        params={"mu": jnp.array([1.0, -1.0])}, support=un.supports.real(2))
    return {"gaussian": gaussian, "ising": un.models.ising_chain(6, coupling=0.4)}


def _sample(models: dict, sampler: str, **kwargs):
    """The samplers' common run: ``sampler``'s sizes (and options, :data:`SAMPLER_RUNS`), the
    Ising chain for Gibbs and the Gaussian for the others, key 3."""
    import jax

    import unnorm as un

    model = models["ising" if sampler == "gibbs" else "gaussian"]
    name, options = SAMPLER_RUNS.get(sampler, (sampler, {}))
    return un.sample(model, key=jax.random.key(3), sampler=name, progress_bar=False,
                     warn=False, **SAMPLER_SIZES[sampler], **options, **kwargs)


def _draws(idata) -> dict:
    """An InferenceData's draws and log-densities as lists (JSON writes a float so that it
    reads back bit for bit), and a digest of every sample statistic's name, dtype and
    bytes."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for name in sorted(idata.sample_stats.data_vars):
        values = np.ascontiguousarray(idata.sample_stats[name])
        digest.update(f"{name}:{values.dtype}:{values.shape}".encode())
        digest.update(values.tobytes())
    return {"x": np.asarray(idata.posterior["x"]).tolist(),
            "lp": np.asarray(idata.sample_stats["lp"]).tolist(), "stats": digest.hexdigest()}


def _record_chunk_calls(calls: list):
    """Every compiled chunk call of the samplers recorded in ``calls`` (what its outputs'
    devices held) until the returned function restores the unrecorded runner."""
    import jax

    from unnorm.samplers import run

    chunk_runner = run._chunk_runner

    def recording_runner(options=()):
        compiled = chunk_runner(options)

        def call(*args, **kwargs):
            states, (draws, stats), finite = compiled(*args, **kwargs)
            if isinstance(draws, jax.core.Tracer):  # the outputs' shapes, nothing computed
                return states, (draws, stats), finite
            leaves = jax.tree_util.tree_leaves(states)
            # the share of the chain axis one device holds: the draws are (draw, chain, ...),
            # the states' leaves (chain, ...); the ids of the devices that hold them (a
            # blocked kernel's calls run in threads, one per device: list.append is atomic),
            # and of those this process's
            calls.append({
                "draws": draws.sharding.shard_shape(draws.shape)[1] / draws.shape[1],
                "states": max(leaf.sharding.shard_shape(leaf.shape)[0] / leaf.shape[0]
                              for leaf in leaves),
                "devices": sorted(d.id for d in draws.sharding.device_set),
                "state_devices": sorted({d.id for leaf in leaves
                                         for d in leaf.sharding.device_set}),
                "local_devices": sorted(d.id for d in draws.sharding.addressable_devices),
                "chains": draws.shape[1]})
            return states, (draws, stats), finite
        return call

    run._chunk_runner = recording_runner

    def restore():
        run._chunk_runner = chunk_runner
    return restore


def _sample_on_devices(samplers) -> dict:
    import numpy as np

    calls = []
    restore = _record_chunk_calls(calls)
    models = _sampler_models()
    out = {}
    for sampler in samplers:
        calls.clear()
        sharded = _sample(models, sampler)
        sharded_calls = list(calls)
        calls.clear()
        single = _sample(models, sampler, devices=1, chain_method="vectorized")
        x, y = (np.asarray(d.posterior["x"]) for d in (sharded, single))
        out[sampler] = {
            "shape": list(x.shape), "dtype": str(x.dtype),
            "max_diff": float(np.max(np.abs(x - y))), "identical": bool(np.array_equal(x, y)),
            "lp_identical": bool(np.array_equal(np.asarray(sharded.sample_stats["lp"]),
                                                np.asarray(single.sample_stats["lp"]))),
            "sharded_calls": sharded_calls, "single_calls": list(calls),
            # the reference of the two processes' runs
            "single": _draws(single)}
    restore()
    return out


def _shares(tree) -> list[float]:
    """The shares of their leading axis that one device holds of ``tree``'s arrays (1.0: each
    device holds all of it), without repeats."""
    import jax

    return sorted({leaf.sharding.shard_shape(leaf.shape)[0] / leaf.shape[0]
                   for leaf in jax.tree_util.tree_leaves(tree) if leaf.ndim})


def _collectives(compiled_text: str) -> dict:
    return {op: compiled_text.count(op + "(") + compiled_text.count(op + "-start(")
            for op in ("all-gather", "all-reduce", "collective-permute", "all-to-all")}


def _fit_on_devices(library_minimum: int, fit_runs=FIT_RUNS) -> dict:
    import jax
    import numpy as np

    import unnorm as un
    from unnorm import sharding
    from unnorm.estimators import contrastive

    model, rows = _model(), data()
    recorder = _Recorder()
    placed, chunk_inputs, collectives, states, sample_calls = [], [], {}, [], []
    running = [None]  # the fit running now
    place_rows, placed_jit = sharding.place_rows, sharding.placed_jit

    def recording_place(*args, **kwargs):
        placement = place_rows(*args, **kwargs)
        array = placement.array
        placed.append({"shard": array.sharding.shard_shape(array.shape)[0],
                       "padded": array.shape[0], "rows": placement.num_rows,
                       "devices": len(array.sharding.device_set)})
        return placement

    def recording_jit(*args, **kwargs):
        compiled = placed_jit(*args, **kwargs)

        def call(train, rows, *rest, **options):
            chunk_inputs.append(rows.sharding.shard_shape(rows.shape)[0])
            if running[0] not in collectives:
                # what the devices exchange in a chunk of steps: partial sums, never rows
                # (nor, for PCD, chains)
                text = compiled.lower(train, rows, *rest, **options).compile().as_text()
                collectives[running[0]] = _collectives(text)
            new_train, losses = compiled(train, rows, *rest, **options)
            # where the estimator's state (PCD's chains) was before and after the call
            states.append([_shares(train.est_state), _shares(new_train.est_state)])
            return new_train, losses
        return call

    starts = []
    sample_model = contrastive.sample_model

    def recording_sample_model(*args, **kwargs):
        # the positions the post-fit sampling starts from: the persistent chains' last
        starts.append(np.asarray(args[7]).tolist())
        return sample_model(*args, **kwargs)

    sharding.place_rows, sharding.placed_jit = recording_place, recording_jit
    contrastive.sample_model = recording_sample_model
    restore = _record_chunk_calls(sample_calls)
    out = {}
    for name, count, label in fit_runs:
        placed.clear(), chunk_inputs.clear(), recorder.clear(), states.clear()
        sample_calls.clear(), starts.clear()
        running[0] = name
        found = _fit(model, name, rows[:count], devices=None if label == "sharded" else 1)
        out[f"{name}/{count}/{label}"] = {
            **found, "placed": list(placed), "chunk_inputs": list(chunk_inputs),
            **recorder.rows(),
            "states": sorted({(tuple(before), tuple(after)) for before, after in states}),
            # the post-fit sampling's calls: the devices its draws were on
            "sample_devices": sorted({tuple(call["devices"]) for call in sample_calls}),
            "post_fit_starts": list(starts)}
    restore()
    contrastive.sample_model = sample_model
    sharding.place_rows, sharding.placed_jit = place_rows, placed_jit
    mesh = jax.sharding.Mesh(np.array(jax.devices()), (sharding.ROW_AXIS,))
    # 8 chains are split 4 and 4; 7 stay whole on every device
    out["split_shares"] = {str(num): _shares(sharding.split_chains(
        jax.device_put(np.zeros((num, 2))), mesh)) for num in (7, 8)}
    # at the library's minimum, the shares of 8 chains, of one pair fewer than the minimum
    # splits and of that least count
    lowered, sharding.MIN_CPU_CHAINS_PER_DEVICE = (sharding.MIN_CPU_CHAINS_PER_DEVICE,
                                                   library_minimum)
    out["library_split_shares"] = {str(num): _shares(sharding.split_chains(
        jax.device_put(np.zeros((num, 2))), mesh))
        for num in (8, 2 * library_minimum - 2, 2 * library_minimum)}
    sharding.MIN_CPU_CHAINS_PER_DEVICE = lowered

    class Rows:
        # a row source: streamed in host blocks, on one device
        def __len__(self):
            return NUM_ROWS

        def __getitem__(self, index):
            return rows[index]

    try:
        un.fit(model, Rows(), "sm", key=jax.random.key(1), devices=2, progress_bar=False)
        out["streamed_error"] = None
    except ValueError as err:
        out["streamed_error"] = str(err)
    out["collectives"] = collectives
    return out


#: AIS on the children's energy at these params (not the base: the weights then vary), with
#: 7 chains and the 8 pilot chains of the step size's adaptation: 15, padded to 16 on two
#: devices, the pilots' mean acceptance leaving the padding copy out
AIS_PARAMS = {"a": 2.0, "b": [0.3, -0.2]}
AIS_RUN = dict(num_chains=7, num_temperatures=5)


def _record_annealing(calls: list):
    """Every compiled call of AIS's continuous annealing recorded in ``calls``: the share of
    the chain axis one device held of its keys and of the chains' positions it returned, and
    the devices of those."""
    from unnorm import ais

    anneal = ais._anneal_continuous

    def call(*args, chain_keys, **kwargs):
        carry, stats = anneal(*args, chain_keys=chain_keys, **kwargs)
        positions = carry[0][0]
        calls.append({"chains": positions.shape[0], "keys": _shares(chain_keys)[0],
                      "positions": _shares(positions)[0],
                      "devices": sorted(d.id for d in positions.sharding.device_set),
                      "local_devices": sorted(d.id for d in
                                              positions.sharding.addressable_devices)})
        return carry, stats

    ais._anneal_continuous = call

    def restore():
        ais._anneal_continuous = anneal
    return restore


def _ais(**kwargs) -> dict:
    import warnings

    import jax
    import numpy as np

    import unnorm as un

    params = {"a": AIS_PARAMS["a"], "b": np.array(AIS_PARAMS["b"])}
    calls = []
    restore = _record_annealing(calls)
    with warnings.catch_warnings():
        # 7 weights: too few for the Pareto k̂ that the heavy-tail check reads
        warnings.simplefilter("ignore")
        found = un.log_partition(_model(), params, method="ais", key=jax.random.key(2),
                                 progress_bar=False, **AIS_RUN, **kwargs)
    restore()
    return {"estimate": found.estimate, "stderr": found.stderr, "ess": found.ess,
            "calls": calls}


def _ais_on_devices() -> dict:
    return {"sharded": _ais(), "single": _ais(devices=1)}


#: AIS on the samplers' spin chain: 7 chains (no pilot chains on a discrete support), padded to
#: 8 on two devices; its Gibbs sweeps are the blocked scan of the chain's two colours
GIBBS_AIS_RUN = dict(num_chains=7, num_temperatures=30)


def _gibbs_ais(**kwargs) -> dict:
    """AIS on the spin chain, with the share of the chain axis each compiled call of the
    discrete annealing held on one device and the devices of its chains."""
    import warnings

    import jax

    import unnorm as un
    from unnorm import ais

    calls = []
    anneal = ais._anneal_discrete

    def call(*args, chain_keys, **options):
        carry, stats = anneal(*args, chain_keys=chain_keys, **options)
        calls.append({"chains": carry[0].shape[0], "positions": _shares(carry[0])[0],
                      "devices": sorted(d.id for d in carry[0].sharding.device_set),
                      "blocked": options.get("blocks") is not None})
        return carry, stats

    ais._anneal_discrete = call
    try:
        with warnings.catch_warnings():
            # 7 weights: too few for the Pareto k̂ that the heavy-tail check reads
            warnings.simplefilter("ignore")
            found = un.log_partition(_sampler_models()["ising"], method="ais",
                                     key=jax.random.key(3), progress_bar=False,
                                     **GIBBS_AIS_RUN, **kwargs)
    finally:
        ais._anneal_discrete = anneal
    return {"estimate": found.estimate, "stderr": found.stderr, "ess": found.ess,
            "calls": calls}


def _mle_on_devices() -> dict:
    """An MLE fit on both devices and on one, with the devices of its post-fit samplings
    (NUTS: in blocks of two chains, split over the devices)."""
    import jax

    import unnorm as un

    calls = []
    restore = _record_chunk_calls(calls)
    out = {}
    for label, devices in (("sharded", None), ("single", 1)):
        calls.clear()
        fitted = un.fit(_model(), data()[:2 * PROCESS_ROWS],
                        un.estimators.MLE(k=2, num_chains=8, num_warmup=20, num_samples=50,
                                          max_rounds=1),
                        key=jax.random.key(1), num_steps=30, progress_bar=False,
                        devices=devices)
        out[label] = {"params": [float(v) for v in (fitted.params["a"], *fitted.params["b"])],
                      "stderr": [float(v) for v in (fitted.stderr["a"], *fitted.stderr["b"])],
                      "stages": list(fitted.stages),
                      "sample_devices": sorted({tuple(c["devices"]) for c in calls})}
    restore()
    return out


def _devices_main(samplers) -> dict:
    """The default run's samplers and fits; with ``["extras"]``, KSD's fits and AIS; with
    ``samplers`` named, only those samplers (and with ``"mle"`` among them, the MLE fits of
    :func:`_mle_on_devices`; with ``"ais_gibbs"``, AIS on the spin chain on both devices and
    on one)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    assert len(jax.devices()) == 2, jax.devices()
    library_minimum = _lower_split_minimum()
    if samplers == ["extras"]:
        return {"fits": _fit_on_devices(library_minimum, EXTRA_FIT_RUNS),
                "ais": _ais_on_devices()}
    if samplers:
        out = {"samplers": _sample_on_devices([s for s in samplers
                                               if s not in ("mle", "ais_gibbs")])}
        if "mle" in samplers:
            out["mle"] = _mle_on_devices()
        if "ais_gibbs" in samplers:
            out["ais_gibbs"] = {"sharded": _gibbs_ais(), "single": _gibbs_ais(devices=1)}
        return out
    return {"samplers": _sample_on_devices(SAMPLERS), "fits": _fit_on_devices(library_minimum)}


# ---- two processes ------------------------------------------------------------------------------

#: "<name>": the global array; "sm/host": every process passes all the rows as a NumPy array,
#: which the fit splits over the processes' devices itself
PROCESS_FITS = ("sm", "ssm", "nce", "pcd", "sm/host")
#: the fits of ``process <id> <port> extras`` (``-m slow``)
EXTRA_PROCESS_FITS = ("ksd",)


def _process_main(process_id: int, port: int, extras: bool = False) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from unnorm import sharding

    _lower_split_minimum()
    process, count = jax.process_index(), jax.process_count()
    _uneven_paces(process)
    assert count == 2 and len(jax.devices()) == 2, jax.devices()
    model, recorder = _model(), _Recorder()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = data()[:2 * PROCESS_ROWS]
    local = rows[PROCESS_ROWS * process:PROCESS_ROWS * (process + 1)]
    spanning = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
    out = {"addressable_rows": [s.data.shape[0] for s in spanning.addressable_shards],
           "fully_addressable": spanning.is_fully_addressable, "errors": []}
    # the global array is used where it lives: a device count cannot split it otherwise,
    # and an array that is not split over its rows is refused
    copies = jax.make_array_from_process_local_data(NamedSharding(mesh, P()), rows)
    for bad, kwargs in ((spanning, {"devices": 1}), (copies, {})):
        try:
            _fit(model, "sm", bad, **kwargs)
        except ValueError as err:
            out["errors"].append(str(err))
    states = []
    placed_jit = sharding.placed_jit

    def recording_jit(*args, **kwargs):
        compiled = placed_jit(*args, **kwargs)

        def call(train, *rest, **options):
            new_train, losses = compiled(train, *rest, **options)
            # the share of the estimator's state (PCD's chains) each device holds after a call
            states.append(_shares(new_train.est_state))
            return new_train, losses
        return call

    sharding.placed_jit = recording_jit
    for name in EXTRA_PROCESS_FITS if extras else PROCESS_FITS:
        estimator, _, host = name.partition("/")
        recorder.clear(), states.clear()
        out[name] = {**_fit(model, estimator, rows if host else spanning), **recorder.rows(),
                     "states": sorted({tuple(shares) for shares in states})}
    sharding.placed_jit = placed_jit
    if extras:
        out["samplers"] = _sample_on_processes()
        out["ais"] = _ais()
    return out


def _uneven_paces(process: int) -> None:
    """Make process 1 pace its compiled loops (:mod:`unnorm.pacing`) to fewer steps a call than
    process 0: the processes' own timings differ, most under load, and every paced loop must
    run the calls process 0 chose, or the partitioned programs' calls stop matching and the
    processes wait on each other for ever."""
    from unnorm import pacing

    if process == 0:
        return
    own = pacing.next_count

    def next_count(last, remaining, capacity, *args, **kwargs):
        return max(1, own(last, remaining, capacity, *args, **kwargs) // 3)

    pacing.next_count = next_count


def _sample_on_processes() -> dict:
    """The default run's samplers over both processes' devices (``devices`` left out), with
    the chunk calls this process made; and the refusal of a device count that names only
    another process's device."""
    from unnorm.samplers import devices as chain_devices

    calls = []
    restore = _record_chunk_calls(calls)
    models = _sampler_models()
    out = {}
    for sampler in SAMPLERS:
        calls.clear()
        out[sampler] = {**_draws(_sample(models, sampler)), "calls": list(calls)}
    restore()
    try:
        chain_devices.require_local(chain_devices.check_devices(1))
        out["count_error"] = None
    except ValueError as err:
        out["count_error"] = str(err)
    return out


# ---- the parent's side --------------------------------------------------------------------------

def score_matching_truth(x) -> dict:
    """SM's estimate and sandwich standard errors for the children's energy
    ``E = a|x|²/2 - b·x``, computed with NumPy: the score ``s = b - a x`` is linear in
    θ = (a, b), so the terms are ``ℓ_i = |s_i|²/2 + div s_i = |s_i|²/2 - d a`` (Hyvärinen
    2005), a quadratic whose minimizer is one linear solve, and ``H⁻¹JH⁻¹/n`` comes from their
    exact derivatives."""
    import numpy as np

    x = np.asarray(x, dtype=float)
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


class Child(NamedTuple):
    """A started child process and the files its output goes to (files, not pipes: a child
    that writes while the parent waits on another never blocks)."""

    process: subprocess.Popen
    stdout: Any
    stderr: Any


def _child_env(device_count: int, cache_dir: str | None) -> dict:
    env = dict(os.environ)
    # each program runs a few times on a few hundred rows, so compiling is nearly all of the
    # children's time: XLA's cheaper code generation (a quarter less CPU in a PCD fit)
    env["XLA_FLAGS"] = " ".join([
        env.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={device_count}",
        "--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
    ]).strip()
    env["JAX_PLATFORMS"] = "cpu"
    if cache_dir is None:
        # two processes compiling the same programs would write the same cache files at once
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    else:
        # the worker's cache (tests/conftest.py): a rerun in the same session compiles nothing
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return env


def _start(arguments: list[str], env: dict) -> Child:
    stdout, stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    process = subprocess.Popen([sys.executable, _SCRIPT, *arguments], env=env, stdout=stdout,
                               stderr=stderr, text=True)
    return Child(process, stdout, stderr)


def start_on_two_devices(samplers=(), cache_dir: str | None = None) -> Child:
    """The one-process child, started (:func:`results` waits for it); with ``samplers``
    named, it runs only those samplers."""
    return _start(["devices", *samplers], _child_env(2, cache_dir))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_on_two_processes(extras: bool = False) -> list[Child]:
    """The two processes, started (process 0 first); :func:`results` waits for them. With
    ``extras``, they run the long studies' fits, samplings and AIS instead of the default
    run's fits."""
    port = str(_free_port())
    return [_start(["process", str(i), port, *(["extras"] if extras else [])],
                   _child_env(1, None)) for i in range(2)]


def stop(children: list[Child]) -> None:
    """Kill those of ``children`` still running and close their files."""
    for child in children:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()
        child.stdout.close(), child.stderr.close()


def results(children: list[Child], timeout: float = 300) -> list[dict]:
    """What each of ``children`` printed on its ``RESULT`` line, once all have ended; all are
    stopped past ``timeout`` seconds or when one fails."""
    found = []
    try:
        for child in children:
            child.process.wait(timeout=timeout)
            child.stdout.seek(0), child.stderr.seek(0)
            lines = [line for line in child.stdout.read().splitlines()
                     if line.startswith("RESULT ")]
            assert child.process.returncode == 0 and lines, child.stderr.read()[-3000:]
            found.append(json.loads(lines[-1][len("RESULT "):]))
    except BaseException:
        stop(children)
        raise
    return found


if __name__ == "__main__":
    if sys.argv[1] == "devices":
        result = _devices_main(sys.argv[2:])
    else:
        result = _process_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] == ["extras"])
    print("RESULT " + json.dumps(result))
