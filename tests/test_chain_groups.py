"""Chain groups: the layout arithmetic, splitting and gathering, and failures inside a group."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import unnorm as un
from unnorm.samplers import chain_blocks, chain_groups
from unnorm.samplers import run as sample_run

# A dense precision: the gradient is a product by a matrix, batched over the chains, whose
# rounding XLA's CPU backend chose by the batch's size before the chains ran in fixed blocks.
_DENSE_GAUSSIAN = un.models.gaussian(3, precision=[[2.0, 0.6, -0.3], [0.6, 1.5, 0.4],
                                                  [-0.3, 0.4, 1.0]])
_SAME_DRAWS_OPTIONS = dict(key=jax.random.key(7), num_warmup=30, num_samples=20,
                           progress_bar=False, warn=False)


@functools.partial(jax.jit, static_argnames=("layout", "chunks"))
def chunk_outputs(tree, *, layout, chunks):
    """``tree`` (leaves with a leading chain axis) split into ``layout``'s groups, each group as
    the outputs of its sampling chunks, the draw ranges ``chunks``: leaves ``(draw, chain,
    ...)``, a list of chunks per group. One program, as a sampler's chunk is; split, swapped and
    sliced outside jit, each operation compiled a program of its own for every shape."""
    return [[jax.tree_util.tree_map(lambda a, s=start, e=stop: jnp.swapaxes(a, 0, 1)[s:e], group)
             for start, stop in chunks]
            for group in chain_groups.split(tree, layout)]


@given(num_chains=st.integers(1, 300), cores=st.integers(1, 16))
def test_layout_covers_every_chain_once_with_no_empty_group(num_chains, cores):
    layout = chain_groups.choose_layout(num_chains, "parallel", cores=cores)
    real = [layout.real_chains(g) for g in range(layout.num_groups)]
    assert sum(real) == num_chains
    assert all(n >= 1 for n in real)
    assert 1 <= layout.num_groups <= min(num_chains, cores)
    # only the last group is padded, by less than a group
    assert all(n == layout.group_size for n in real[:-1])
    assert layout.num_groups * layout.group_size - num_chains < layout.group_size


@given(num_chains=st.integers(1, 300), cores=st.integers(1, 16),
       block=st.sampled_from([1, 2, 5, 32]))
def test_groups_hold_whole_blocks_each_block_once(num_chains, cores, block):
    layout = chain_groups.choose_layout(num_chains, "parallel", cores=cores, block=block)
    units = layout.units
    assert units.group_size == block and units.num_groups == -(-num_chains // block)
    assert layout.group_size % block == 0
    runs = [list(layout.units_of(g)) for g in range(layout.num_groups)]
    assert [u for run in runs for u in run] == list(range(units.num_groups))
    assert all(run for run in runs)       # no group without a block
    assert sum(units.real_chains(u) for u in range(units.num_groups)) == num_chains


def test_vectorized_is_one_group(monkeypatch):
    monkeypatch.setattr(chain_groups, "available_cores", lambda: 8)
    assert chain_groups.choose_layout(64, "vectorized").num_groups == 1
    assert chain_groups.choose_layout(64, "parallel").num_groups == 8
    assert chain_groups.choose_layout(1, "parallel").num_groups == 1


@pytest.mark.parametrize("num_chains,num_groups", [(7, 3), (6, 2), (1, 1), (5, 5)])
def test_split_then_gather_returns_every_chain_in_order(num_chains, num_groups):
    layout = chain_groups.GroupLayout(num_chains, num_groups)
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(num_chains, 9, 2, 3)).astype(np.float32)   # (chain, draw, ...)
    flags = rng.random((num_chains, 9)) < 0.5
    # a chunk's outputs are (draw, chain, ...): write draws 0..4 and 4..9 separately
    chunks = ((0, 4), (4, 9))
    groups = chunk_outputs({"x": draws, "stats": {"diverging": flags}}, layout=layout,
                           chunks=chunks)
    assert len(groups) == num_groups
    sink = chain_groups.DrawSink(layout, total=9)
    for g, group in enumerate(groups):
        for (start, _), outputs in zip(chunks, group, strict=True):
            assert outputs["x"].shape[1] == layout.group_size
            sink.write(outputs, start, g)
    out = sink.result()
    np.testing.assert_array_equal(out["x"], draws)
    np.testing.assert_array_equal(out["stats"]["diverging"], flags)


@pytest.mark.parametrize("num_groups,chunks", [(1, ((0, 6),)), (1, ((0, 2), (2, 6))),
                                               (2, ((0, 6),)), (3, ((0, 4), (4, 6)))])
def test_the_sink_stores_compact_leaves_in_their_host_dtype(num_groups, chunks):
    # Discrete draws leave the chunks as int8 and are stored in the position's dtype; every
    # path of the sink (one group in one chunk keeps the buffer) must convert them.
    layout = chain_groups.GroupLayout(5, num_groups)
    rng = np.random.default_rng(1)
    spins = rng.choice(np.array([-1, 1], np.int8), size=(5, 6, 3))       # (chain, draw, ...)
    lp = rng.normal(size=(5, 6)).astype(np.float32)
    sink = chain_groups.DrawSink(layout, total=6, host_dtypes={np.int8: np.float32})
    for g, group in enumerate(chunk_outputs((spins, lp), layout=layout, chunks=chunks)):
        for (start, _), outputs in zip(chunks, group, strict=True):
            sink.write(outputs, start, g)
    x, stored_lp = sink.result()
    assert x.dtype == np.float32 and stored_lp.dtype == np.float32
    np.testing.assert_array_equal(x, spins.astype(np.float32))
    np.testing.assert_array_equal(stored_lp, lp)


def _write_all(sink, tree, layout):
    for g, (outputs,) in enumerate(chunk_outputs(tree, layout=layout,
                                                 chunks=((0, sink.total),))):
        sink.write(outputs, 0, g)


@pytest.mark.parametrize("event_shape,dtype,used", [((3,), np.float32, True),
                                                    ((4,), np.float32, False),
                                                    ((3,), np.float64, False)])
def test_the_reserved_draws_array_is_used_when_it_fits(event_shape, dtype, used):
    layout = chain_groups.GroupLayout(5, 2)
    draws = np.random.default_rng(2).normal(size=(5, 6, 3)).astype(np.float32)
    sink = chain_groups.DrawSink(layout, total=6)
    sink.reserve_first(event_shape, dtype)
    reserved = sink._reserved
    _write_all(sink, (draws, np.zeros((5, 6), np.float32)), layout)
    x, _ = sink.result()
    assert (x.base is reserved) == used
    np.testing.assert_array_equal(x, draws)


def test_a_reservation_after_the_first_write_is_dropped():
    layout = chain_groups.GroupLayout(4, 2)
    sink = chain_groups.DrawSink(layout, total=2)
    groups = chunk_outputs(np.ones((4, 2, 3), np.float32), layout=layout, chunks=((0, 2),))
    sink.write(groups[0][0], 0, 0)
    sink.reserve_first((3,), np.float32)
    sink.write(groups[1][0], 0, 1)
    assert sink._reserved is None
    np.testing.assert_array_equal(sink.result(), np.ones((4, 2, 3)))


@pytest.mark.parametrize("num_groups", [1, 3])
def test_map_groups_runs_while_waiting_once(num_groups):
    layout = chain_groups.GroupLayout(6, num_groups)
    calls = []
    out = chain_groups.map_groups(lambda g: g * 10, layout, chain_groups.executor(layout),
                                  lambda: calls.append(1))
    assert out == [10 * g for g in range(num_groups)] and calls == [1]


def test_padding_repeats_the_last_chain():
    layout = chain_groups.GroupLayout(5, 2)
    groups = chain_groups.split(jnp.arange(5.0), layout)
    np.testing.assert_array_equal(groups[0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(groups[1], [3.0, 4.0, 4.0])


def test_a_failure_in_one_group_says_where(monkeypatch):
    monkeypatch.setattr(chain_groups, "available_cores", lambda: 2)
    real_chunk = sample_run._chunk_runner()
    calls = []

    def failing_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # a block of the first chunk, in either group
            raise FloatingPointError("boom in a group")
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(sample_run, "_chunk_runner", lambda options=(): failing_chunk)
    # three blocks of HMC chains in two groups; the options of the test below share its
    # compilation
    with pytest.raises(RuntimeError, match=r"failed during warmup at draws 0\.\.4 of 30: "
                                           r"FloatingPointError: boom in a group"):
        un.sample(_DENSE_GAUSSIAN, num_chains=2 * chain_blocks.TRAJECTORY_BLOCK + 1,
                  **_SAME_DRAWS_OPTIONS, sampler="hmc")


def test_chain_method_is_checked():
    with pytest.raises(ValueError, match=r"chain_method.*'threads'.*parallel.*vectorized"):
        un.sample(_DENSE_GAUSSIAN, key=jax.random.key(0), sampler="mala", chain_method="threads")


@pytest.mark.parametrize("files,expected", [
    ({"cpu.max": "200000 100000\n"}, 2.0),                       # cgroup v2, 2 CPUs
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),                          # v2, no quota
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),                                                    # no control group files
])
def test_cgroup_cpu_quota_is_read(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert chain_groups.cgroup_cpu_limit(str(tmp_path)) == expected


def test_cores_are_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(chain_groups, "cgroup_cpu_limit", lambda: 1.5)
    assert chain_groups.available_cores() == min(2, _affinity())
    monkeypatch.setattr(chain_groups, "cgroup_cpu_limit", lambda: None)
    assert chain_groups.available_cores() == _affinity()


def _affinity() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.parametrize("sampler, model", [
    ("rwmh", un.models.gaussian(3)),
    ("gibbs", un.models.ising_chain(6, coupling=0.4)),
], ids=["rwmh", "gibbs"])
def test_a_chains_draws_do_not_depend_on_how_many_run_beside_it(sampler, model):
    # chain c's keys and starting point come from fold_in(key, c) and the c-th child seed:
    # the first 2 chains of a 5-chain run are a 2-chain run, bit for bit, in groups or not
    options = dict(key=jax.random.key(7), sampler=sampler, num_warmup=50, num_samples=40,
                   progress_bar=False, warn=False)
    two = un.sample(model, num_chains=2, chain_method="vectorized", **options)
    five = un.sample(model, num_chains=5, chain_method="parallel", **options)
    np.testing.assert_array_equal(np.asarray(five.posterior["x"])[:2],
                                  np.asarray(two.posterior["x"]))


@pytest.mark.parametrize("sampler,width", [("nuts", chain_blocks.TRAJECTORY_BLOCK),
                                           ("hmc", chain_blocks.TRAJECTORY_BLOCK),
                                           ("mala", None), ("langevin", None), ("rwmh", None)])
def test_only_trajectory_kernels_run_in_blocks(sampler, width):
    # blocks for the Langevin kernels cost too much at either end of the chain counts
    # (benchmarks/README.md): they run each group as one vectorized computation
    assert chain_blocks.block_width(un.samplers.build_sampler(sampler, num_warmup=10)) == width


@pytest.mark.parametrize("sampler", ["mala", "langevin", "annealed_langevin"])
def test_langevin_kernels_run_in_blocks_when_asked(sampler):
    kernel = un.samplers.build_sampler(sampler, num_warmup=10, chain_block=4)
    assert chain_blocks.block_width(kernel) == 4
    # parallel tempering's chains carry their replicas: its blocks are its base's
    tempered = un.samplers.build_sampler("tempering", num_warmup=10, base=sampler,
                                         chain_block=4)
    assert chain_blocks.block_width(tempered) == 4


@pytest.mark.parametrize("value", [True, 0, -3, 2.0, "4", np.array(1.5)])
@pytest.mark.parametrize("sampler", ["mala", "annealed_langevin", "tempering"])
def test_chain_block_is_checked(sampler, value):
    with pytest.raises(ValueError, match=r"chain_block must be None .* or a positive integer, "
                                         r"the width of the blocks the chains run in; got "):
        un.samplers.build_sampler(sampler, num_warmup=10, chain_block=value)


def test_chain_block_is_refused_where_the_kernel_has_its_own_blocks_or_none():
    model = _DENSE_GAUSSIAN
    with pytest.raises(TypeError, match=r"sampler 'nuts' does not take option\(s\) "
                                        r"\['chain_block'\]"):
        un.sample(model, key=jax.random.key(0), sampler="nuts", chain_block=4)
    with pytest.raises(TypeError, match=r"sampler 'tempering' with base='rwmh': sampler 'rwmh' "
                                        r"does not take option\(s\) \['chain_block'\]"):
        un.sample(model, key=jax.random.key(0), sampler="tempering", base="rwmh",
                  chain_block=4)


@pytest.mark.parametrize("sampler,options", [pytest.param("nuts", {}, marks=pytest.mark.slow),
                                             ("hmc", {}),
                                             ("mala", {"chain_block": 4})],
                         ids=["nuts", "hmc", "mala-blocks-of-4"])
def test_gradient_based_draws_do_not_depend_on_chains_method_or_cores(sampler, options,
                                                                      monkeypatch):
    # chain c is lane c mod W of a block of W chains, every block one compiled program: the
    # first 2 chains of any run are a 2-chain run, bit for bit, adaptation included (MALA
    # only when asked: unblocked, XLA rounded this model's gradient by the batch's size)
    width = chain_blocks.block_width(un.samplers.build_sampler(sampler, num_warmup=30,
                                                               **options))
    options = dict(_SAME_DRAWS_OPTIONS, sampler=sampler, **options)
    two = un.sample(_DENSE_GAUSSIAN, num_chains=2, chain_method="vectorized", **options)
    # 2W + 1 chains on 2 cores are two groups; every run calls the one compiled block
    runs = [(5, "vectorized", 2), (5, "parallel", 1), (2 * width + 1, "parallel", 2),
            (8, "parallel", 2)]
    for num_chains, chain_method, cores in runs:
        monkeypatch.setattr(chain_groups, "available_cores", lambda cores=cores: cores)
        layout = chain_groups.choose_layout(num_chains, chain_method, block=width)
        assert layout.num_groups == (cores if chain_method == "parallel"
                                     and num_chains > width else 1)
        many = un.sample(_DENSE_GAUSSIAN, num_chains=num_chains, chain_method=chain_method,
                         **options)
        for group in ("posterior", "sample_stats"):
            for name, value in many[group].data_vars.items():
                np.testing.assert_array_equal(np.asarray(value)[:2],
                                              np.asarray(two[group][name]),
                                              err_msg=f"{name}, {num_chains} chains, "
                                                      f"{chain_method}, {cores} cores")


def test_blocked_mala_calls_one_program_of_the_block_width(monkeypatch):
    # what makes the identity above: every call is the one 4-chain program, never a batch of
    # the run's size (the test above compiled it: these runs compile nothing new)
    real_chunk = sample_run._chunk_runner()
    widths = []

    def recording_chunk(model, spec, params, chain_keys, *args, **kwargs):
        widths.append(chain_keys.shape[0])
        return real_chunk(model, spec, params, chain_keys, *args, **kwargs)

    monkeypatch.setattr(sample_run, "_chunk_runner", lambda options=(): recording_chunk)
    monkeypatch.setattr(chain_groups, "available_cores", lambda: 2)
    for num_chains, chain_method in [(9, "parallel"), (5, "vectorized")]:
        widths.clear()
        un.sample(_DENSE_GAUSSIAN, num_chains=num_chains, chain_method=chain_method,
                  sampler="mala", chain_block=4, **_SAME_DRAWS_OPTIONS)
        blocks = -(-num_chains // 4)
        assert widths and set(widths) == {4} and len(widths) % blocks == 0, widths


def test_starting_points_do_not_depend_on_the_number_of_chains():
    support = un.supports.positive(3)
    few = support.initial_unconstrained(jax.random.key(1), 2)
    many = support.initial_unconstrained(jax.random.key(1), 6)
    np.testing.assert_array_equal(many[:2], few)
    assert np.all(np.abs(many) <= 2.0) and len(np.unique(many)) == many.size
