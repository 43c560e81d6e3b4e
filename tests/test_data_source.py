"""Data larger than memory: fits on a memmap or a row source, read in host blocks, equal the
fits on the same rows in memory; bad sources and unsupported estimators are refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree

import unnorm as un
from unnorm import data_source

KEY = jax.random.key(0)


class Rows:
    """A row source with nothing but ``__len__`` and ``__getitem__`` over row slices (an h5py
    or zarr dataset's interface); counts the slices read."""

    def __init__(self, array):
        self.array = array
        self.reads = 0

    def __len__(self):
        return len(self.array)

    def __getitem__(self, rows):
        assert isinstance(rows, slice), "a row source is only ever sliced"
        self.reads += 1
        return self.array[rows].copy()


def natural_gaussian(params, x):
    # E = ½ xᵀKx - hᵀx: the score is linear in (K, h), so SM has a closed form
    return 0.5 * x @ params["K"] @ x - params["h"] @ x


def _memmap(tmp_path, array):
    path = tmp_path / "data.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=array.shape)
    out[:] = array
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


@pytest.fixture
def small_blocks(monkeypatch):
    # 2-D rows: host blocks of 128 rows, so 600 rows are 5 blocks, the last shifted back
    # over 40 rows the block before counted
    monkeypatch.setattr(data_source, "HOST_BLOCK_ELEMENTS", 256)
    assert data_source.host_block_rows(600, 2) == 128


def test_memmap_and_row_source_give_the_in_memory_closed_form(tmp_path, small_blocks):
    # float64, so that the only difference left is the order of summation (blocks of the
    # host, then of the device): estimates and standard errors agree to 1e-6 relative
    with jax.enable_x64(True):
        model = un.Model(natural_gaussian, params={"K": jnp.eye(2), "h": jnp.zeros(2)},
                         constraints={"K": un.constraints.positive_definite},
                         support=un.supports.real(2))
        assert model.dtype == np.float64
        rng = np.random.default_rng(1)
        x = rng.normal(size=(600, 2)) @ np.array([[1.0, 0.3], [0.0, 0.7]]) + [0.5, -1.0]
        in_memory = un.fit(model, x, "sm", key=KEY, progress_bar=False)
        assert in_memory.stages == ("closed form", "sandwich")
        source = Rows(x)
        for data in (_memmap(tmp_path, x), source):
            streamed = un.fit(model, data, "sm", key=KEY, progress_bar=False)
            assert streamed.stages == in_memory.stages
            assert streamed.num_observations == 600
            for name in ("K", "h"):
                np.testing.assert_allclose(streamed.params[name], in_memory.params[name],
                                           rtol=1e-6, err_msg=name)
                np.testing.assert_allclose(streamed.stderr[name], in_memory.stderr[name],
                                           rtol=1e-6, err_msg=name)
        # the checks, the closed form, its stationarity test and the sandwich: a few passes
        # of 5 blocks, plus the subsample's slices; never the whole data in one slice
        assert source.reads < 60


def test_minibatch_steps_from_a_memmap_are_the_in_memory_steps(tmp_path):
    # The steps draw their rows from the step keys as the in-memory steps do and read them on
    # the host: the same batches, so the same losses and the same estimate, bit for bit
    model = un.models.gaussian(2)
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(600, 2)) * [1.0, 0.5] + [0.3, -0.2]).astype(np.float32)
    kwargs = dict(key=KEY, batch_size=64, num_steps=200, stderr=False, progress_bar=False)
    estimator = un.estimators.DSM(sigma=0.3)
    in_memory = un.fit(model, x, estimator, **kwargs)
    streamed = un.fit(model, _memmap(tmp_path, x), estimator, **kwargs)
    assert streamed.stages == in_memory.stages == ("optimizer",)
    np.testing.assert_array_equal(streamed.loss, in_memory.loss)
    for name in ("mu", "prec"):
        np.testing.assert_array_equal(streamed.params[name], in_memory.params[name])


def _index_keyed_objective():
    """A tiny objective whose terms depend on each row's index, as DSM's, SSM's and NCE's
    noise does: ``ℓ_i = (a·x_i + b - i/100)²``."""
    def terms(params, state, batch, key):
        target = batch.index.astype(batch.x.dtype) / 100
        return (params["a"] * batch.x[:, 0] + params["b"] - target) ** 2

    def loss(params, state, batch, key):
        return jnp.mean(terms(params, state, batch, key)), (state, {})

    return un.estimators.Objective(lambda params, key, data: (), loss, terms,
                                   un.estimators.Traits())


def test_blocked_sums_take_each_row_with_its_index_in_the_whole_data_set(small_blocks):
    # A host block that passed its own row numbers would give other terms and other sums.
    # Float64, 600 rows in 5 host blocks, the last shifted back over 40 counted rows: the sums
    # over host blocks are the in-memory sums to rounding.
    with jax.enable_x64(True):
        params = {"a": jnp.asarray(0.7), "b": jnp.asarray(-0.2)}
        model = un.Model(lambda p, x: p["a"] * x[0] + p["b"], params=params,
                         support=un.supports.real(1))
        objective = _index_keyed_objective()
        x = np.random.default_rng(4).normal(size=(600, 1))
        flat, _ = ravel_pytree(params)
        static = dict(model=model, objective=objective, constrained=True)
        whole = un.solvers.derivatives(flat, params, jnp.asarray(x), (), KEY, **static)
        source = data_source.as_source(Rows(x), (1,), np.float64)
        blocked = un.solvers.derivatives(flat, params, source, (), KEY, **static)
        for name, got, want in zip(blocked._fields, blocked, whole, strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10,
                                       atol=1e-12, err_msg=name)


def test_take_reads_each_distinct_row_once_in_order():
    source = Rows(np.arange(40.0).reshape(20, 2))
    rows = data_source.as_source(source, (2,), np.float32)
    reads = source.reads
    got = rows.take(np.array([[7, 3, 3], [4, 19, 7]]))
    np.testing.assert_array_equal(got[..., 0], [[14.0, 6.0, 6.0], [8.0, 38.0, 14.0]])
    assert source.reads - reads == 3  # runs 3-4, 7 and 19


def test_view_is_an_evenly_spaced_subsample(monkeypatch):
    monkeypatch.setattr(data_source, "SAMPLE_ROWS", 5)
    rows = data_source.as_source(Rows(np.arange(101.0)[:, None]), (1,), np.float32)
    np.testing.assert_array_equal(np.asarray(data_source.view(rows))[:, 0],
                                  [0.0, 25.0, 50.0, 75.0, 100.0])
    array = np.zeros((3, 1))
    assert data_source.view(array) is array


def test_what_is_streamed():
    assert data_source.is_streamed(Rows(np.zeros((3, 2))))
    in_memory = (np.zeros((3, 2)), jnp.zeros((3, 2)), [[0.0, 1.0]], ((0.0, 1.0),),
                 pd.DataFrame(np.zeros((3, 2))))
    assert not any(data_source.is_streamed(d) for d in in_memory)


# ---- refused ------------------------------------------------------------------------------------

MODEL = un.models.gaussian(2)
DATA = np.random.default_rng(3).normal(size=(300, 2)).astype(np.float32)


class NoLength:
    def __getitem__(self, rows):
        return DATA[rows]


class ThreeColumns(Rows):
    def __getitem__(self, rows):
        return np.zeros((len(range(*rows.indices(len(self)))), 3))


def test_a_source_without_len_is_refused():
    with pytest.raises(TypeError, match=r"data of type NoLength has __getitem__ but no __len__"):
        un.fit(MODEL, NoLength(), "sm", key=KEY, progress_bar=False)


def test_rows_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"data has rows of shape \(3,\), but the model's "
                                         r"support needs rows of shape \(2,\)"):
        un.fit(MODEL, ThreeColumns(DATA), "sm", key=KEY, progress_bar=False)


@pytest.mark.parametrize("name", ["ksd", "cd", "mle"])
def test_estimators_that_need_every_row_in_memory_are_refused(name):
    with pytest.raises(ValueError, match=rf"data is streamed .*estimator '{name}' needs all "
                                         r"observations in memory.*np.asarray\(data\)"):
        un.fit(MODEL, Rows(DATA), name, key=KEY, progress_bar=False)


def test_full_batch_optimizer_steps_are_refused_with_advice():
    with pytest.raises(ValueError, match=r"batch_size=None .* data is streamed .*starts with "
                                         r"the optimizer.*Pass batch_size"):
        un.fit(MODEL, Rows(DATA), "sm", key=KEY, progress_bar=False)


def test_a_bad_value_is_reported_with_its_block(small_blocks):
    bad = DATA.copy()
    bad[130, 1] = np.nan
    with pytest.raises(ValueError, match=r"data\[128:256\] contains 1 NaN or infinite "
                                         r"value\(s\) \(first at row 2\)"):
        un.fit(MODEL, Rows(bad), "sm", key=KEY, batch_size=32, progress_bar=False)


# ---- full-batch steps over many in-memory rows --------------------------------------------------

def test_blocked_value_and_grad_is_the_mean_over_all_rows():
    # 600 rows in blocks of 128, the last shifted back over 40 counted rows; float64, so the
    # only difference is the order of summation
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(6).normal(size=(600, 2)))
        theta = {"w": jnp.array([0.3, -1.2])}

        def terms(t, rows, index):
            return jnp.log1p((rows @ t["w"] - index / 600) ** 2)

        value, grad = data_source.blocked_value_and_grad(terms, theta, x, 128)
        want_value, want_grad = jax.value_and_grad(
            lambda t: jnp.mean(terms(t, x, jnp.arange(600))))(theta)
        np.testing.assert_allclose(value, want_value, rtol=1e-12)
        np.testing.assert_allclose(grad["w"], want_grad["w"], rtol=1e-12)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the 'ssm' fit did not converge")
def test_full_batch_steps_summed_over_row_blocks_are_the_one_pass_steps(monkeypatch):
    # 600 rows in blocks of 128 (the last shifted back): the blocked loss and gradient are the
    # one-pass ones up to float32 rounding of the sums, a few ulps of the loss at each step
    model = un.models.gaussian(2)
    x = (np.random.default_rng(5).normal(size=(600, 2)) * [1.0, 0.5]).astype(np.float32)
    kwargs = dict(key=KEY, num_steps=100, stderr=False, progress_bar=False, method="optimizer")
    one_pass = un.fit(model, x, "ssm", **kwargs)
    monkeypatch.setattr(data_source, "FULL_BATCH_BLOCKED_ELEMENTS", 1)
    monkeypatch.setattr(data_source, "FULL_BATCH_BLOCK_ROWS", 128)
    assert data_source.full_batch_block_rows(600, 5, un.estimators.SSM().build(model, False)) == 128
    blocked = un.fit(model, x, "ssm", **kwargs)
    np.testing.assert_allclose(blocked.loss, one_pass.loss, rtol=1e-5, atol=1e-6)
    for name in ("mu", "prec"):
        np.testing.assert_allclose(blocked.params[name], one_pass.params[name], rtol=1e-4,
                                   atol=1e-5)


def test_small_full_batch_fits_keep_one_pass():
    model = un.models.gaussian(2)
    objective = un.estimators.SSM().build(model, False)
    assert data_source.full_batch_block_rows(10**5, 5, objective) is None
    assert data_source.full_batch_block_rows(10**6, 110, objective) == 8192
    cd = un.estimators.CD().build(model, False)
    assert data_source.full_batch_block_rows(10**6, 110, cd) is None
