"""The full-data passes of the fit driver: sums over blocks of rows equal the sums over all rows."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import unnorm as un
from unnorm import solvers
from unnorm.estimators import Batch
from unnorm.uncertainty import sandwich_covariance, sandwich_from_moments


@functools.partial(jax.jit, static_argnames=("objective", "model"))
def _unblocked(flat, u, data, state, key, *, objective, model):
    """Value, gradient, Hessian, mean gradient outer product and the per-observation gradients,
    from all rows at once."""
    unravel = ravel_pytree(u)[1]
    n = data.shape[0]

    def terms(f):
        return objective.terms(model.to_constrained(unravel(f)), state,
                               Batch(data, jnp.arange(n)), key)

    def mean_loss(f):
        return jnp.mean(terms(f))

    grads = jax.jacrev(terms)(flat)
    return (mean_loss(flat), jax.grad(mean_loss)(flat), jax.hessian(mean_loss)(flat),
            grads.T @ grads / n), grads


def test_blocks_that_do_not_divide_n_give_the_sums_over_all_rows():
    # float64, so that the only difference left is the order of summation: 37 rows in blocks
    # of 8, the last block shifted back over rows the block before counted (weight 0). DSM's
    # noise is keyed on the observation index: a row given the wrong index in its block
    # would change the sums by far more than the tolerance.
    with jax.enable_x64(True):
        model = un.models.gaussian(2, mean=np.array([0.3, -0.2]),
                                   precision=np.array([[1.5, 0.4], [0.4, 0.8]]))
        data = jnp.asarray(np.random.default_rng(1).normal(size=(37, 2)))
        objective = un.estimators.DSM(sigma=0.5).build(model, False)
        state = objective.init(model.params, jax.random.key(2), data)
        u = model.to_unconstrained(model.params)
        flat, _ = ravel_pytree(u)
        assert flat.dtype == jnp.float64
        key = jax.random.key(3)
        blocked = solvers.derivatives(flat, u, data, state, key, model=model,
                                      objective=objective, constrained=False, block=8)
        whole, grads = _unblocked(flat, u, data, state, key, objective=objective, model=model)
        for name, got, want in zip(blocked._fields, blocked, whole, strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10,
                                       atol=1e-12, err_msg=name)
        # the sandwich from the summed moments is the sandwich from the n gradients
        from_grads = sandwich_covariance(np.asarray(grads), np.asarray(whole[2])).covariance
        from_sums = sandwich_from_moments(np.asarray(blocked.hessian),
                                          np.asarray(blocked.score_outer), 37).covariance
        np.testing.assert_allclose(from_sums, from_grads, rtol=1e-9, atol=1e-14)


def test_block_rows():
    assert solvers.block_rows(2_000_000, 110) * 110 <= solvers.BLOCK_ELEMENTS
    assert solvers.block_rows(2_000_000, 1) == solvers.MAX_BLOCK_ROWS
    assert solvers.block_rows(10**6, 10**6) == solvers.MIN_BLOCK_ROWS
    assert solvers.block_rows(300, 2) == 300  # one block of the whole data, no padding


def test_float32_sums_over_many_blocks_keep_their_precision():
    """20 000 rows in blocks of 4: 5000 block sums added in float32. A plain running sum's
    rounding grows with the number of additions: without the compensation the gradient was off
    by 4.2e-6 and J by 2.3e-6 of their largest entries; with it, 2.8e-7 and 1.7e-8."""
    model = un.models.gaussian(2, mean=np.array([3.0, -2.0]))
    rows = np.random.default_rng(4).normal(loc=[3.0, -2.0], size=(20_000, 2))
    objective = un.estimators.SM().build(model, False)
    u = model.to_unconstrained(model.params)
    flat, _ = ravel_pytree(u)
    key = jax.random.key(0)

    def means(dtype, block):
        data = jnp.asarray(rows, dtype)
        state = objective.init(model.params, key, data)
        return solvers.derivatives(flat.astype(dtype), jax.tree_util.tree_map(
            lambda leaf: leaf.astype(dtype), u), data, state, key, model=model,
            objective=objective, constrained=False, block=block)

    with jax.enable_x64(True):
        exact = means(jnp.float64, 4096)
    blocked = means(jnp.float32, 4)
    assert blocked.grad.dtype == jnp.float32
    for name, got, want in zip(blocked._fields, blocked, exact, strict=True):
        got, want = np.asarray(got, float), np.asarray(want)
        assert np.max(np.abs(got - want)) <= 1e-6 * np.max(np.abs(want)), name


def test_least_squares_step_leaves_out_what_the_dtype_cannot_resolve():
    # the Hessian of a quadratic in a symmetric 2 x 2 matrix K flattened (K01 and K10 enter
    # only through their sum): exactly singular along e01 - e10, which float32 rounding left
    # at an eigenvalue of -5.6e-10 in a DSM fit's pass
    exact = np.array([[2.0, 0.0, 0.0, 0.0],
                      [0.0, 1.0, 1.0, 0.0],
                      [0.0, 1.0, 1.0, 0.0],
                      [0.0, 0.0, 0.0, 3.0]])
    null = np.array([0.0, 1.0, -1.0, 0.0]) / np.sqrt(2.0)
    rounded = exact - 5.6e-10 * np.outer(null, null)
    rhs = np.array([1.0, 0.5, 0.5 + 1e-7, -2.0])   # the gradient's own float32 rounding
    step = solvers._least_squares_step(rounded, rhs, np.float32)
    np.testing.assert_allclose(step, [0.5, 0.25, 0.25, -2.0 / 3.0], rtol=1e-6)
    # float64's cutoff inverts the rounding: a step of 1e-7 / 5.6e-10 along the null direction
    loose = np.linalg.lstsq(rounded, rhs, rcond=None)[0]
    assert abs(loose[1] - loose[2]) > 1.0
    # parameters on very different scales are resolved, not cut: Jacobi scaling first
    wide = np.diag([1e-20, 1.0, 1e20])
    np.testing.assert_allclose(solvers._least_squares_step(wide, np.ones(3), np.float32),
                               [1e20, 1.0, 1e-20], rtol=1e-12)
