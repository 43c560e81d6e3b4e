"""The fit driver: θ̂ from data with any estimator, then standard errors.

``fit`` works in the unconstrained space of the parameters (NumPyro's ``biject_to``) and reads
as a plan of stages, chosen from the estimator's declared :class:`~unnorm.estimators.Traits`
before anything runs (:func:`_plan`):

1. **solve** — ``closed form`` for a quadratic objective (the score-matching family when the
   score ``-∇ₓE`` is linear in θ: one linear solve); ``newton`` from the initial values for a
   small deterministic objective that is convex for this energy (E affine in θ and the
   estimator convex then) or whose derivatives cost a few optimizer steps (KSD); otherwise
   the ``optimizer`` (any optax transformation in jitted chunks paced by wall time, full
   batch or minibatches), refined by ``newton`` steps on the full-data objective when
   standard errors are wanted and the objective is deterministic, so that the sandwich
   formula is evaluated at the exact minimizer it assumes, and by ``trust region`` steps
   where damped Newton is far from a minimum (data far from the origin or on a large scale
   leave the optimizer short of it);
2. **finish** — the estimator's own stage where it has one (MLE's Monte Carlo MLE, the
   likelihood's sandwich from draws of the fitted model for CD/PCD, KSD's U-statistic
   sandwich), else the ``sandwich`` covariance ``H⁻¹JH⁻¹/n`` of the per-observation terms,
   nuisance parameters (NCE's log Z) included as part of one parameter pytree;
3. **result** — ``FitResult``, whose ``stages`` lists what ran.
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

from . import _checks, _xla, data_source, intervals, pacing, sharding, solvers, threefry
from .data_source import RowSource, view
from .errors import FitError, data_location, data_scale
from .estimators import Batch, Estimator, Objective, objective_params, resolve
from .improper import warn_energy_sign
from .model import Model, check_finite_energies, format_params
from .result import FitResult
from .samplers.devices import from_first_process, host_array
from .trust_region import trust_region_newton
from .uncertainty import (
    delta_method,
    describe_direction,
    parameter_names,
    sandwich_from_moments,
    underflowing,
    unidentified_directions,
    unit_curvature_scale,
)

__all__ = ["fit", "FitError", "STDERR_AUTO_LIMIT"]

#: ``stderr="auto"`` computes standard errors (and keys noise on observations) up to this many
#: scalar parameters; beyond it the p×p Hessian is too costly and neural energies train better
#: with fresh noise at every step.
STDERR_AUTO_LIMIT = 1000


class TrainState(NamedTuple):
    """The carry of the optimizer loop."""

    unconstrained: Any
    opt_state: Any
    est_state: Any
    consecutive_failures: jax.Array
    skipped: jax.Array
    average: Any = ()
    num_averaged: Any = ()


@functools.lru_cache(maxsize=64)
def _objective(estimator: Estimator, model: Model, resample: bool) -> Objective:
    # cached so that repeated fits of one model reuse the compiled training chunk
    return estimator.build(model, resample)


@functools.lru_cache(maxsize=64)
def _params_map(model: Model, objective: Objective):
    """``theta ↦ objective_params(model, objective, theta)``, one object per model and
    objective, so that programs compiled for it (the interval grid's) are found again."""
    return functools.partial(objective_params, model, objective)


#: the default step size of a Monte Carlo gradient's fit decays over the second half of the run
#: to this fraction of its first half's
FINAL_STEP_FRACTION = 1e-2


@functools.lru_cache(maxsize=8)
def _default_optimizer(learning_rate: float, decay_steps: int | None = None
                       ) -> optax.GradientTransformation:
    """Adam at ``learning_rate``; with ``decay_steps``, constant for the first half of that
    many steps, then decaying exponentially to ``FINAL_STEP_FRACTION`` of it at the last."""
    if decay_steps is None:
        return optax.adam(learning_rate)
    half = decay_steps // 2
    schedule = optax.join_schedules(
        [optax.constant_schedule(learning_rate),
         optax.exponential_decay(learning_rate, max(decay_steps - half, 1),
                                 FINAL_STEP_FRACTION)],
        [half])
    return optax.adam(schedule)


def _chosen_default_optimizer(num_params: int, num_steps: int, monte_carlo: bool
                              ) -> optax.GradientTransformation:
    """The default optimizer. Unconstrained parameters of classical models are O(1): Adam at
    1e-2 moves them in a few hundred steps, where neural energies trained by deterministic
    losses need the usual 1e-3. A Monte Carlo gradient (CD, PCD, MLE) is a stochastic
    approximation (Robbins & Monro 1951), whose iterates settle only as the step size goes to
    0: Adam at 1e-2 for the first half of the run, whatever the size (1e-3 left an RBM of
    1,104 parameters on images far from its likelihood's maximum), then decaying
    exponentially to a hundredth of it, so that the second half's iterates, averaged into the
    estimate (Polyak & Juditsky 1992), stop drifting."""
    if monte_carlo:
        return _default_optimizer(1e-2, num_steps)
    return _default_optimizer(1e-2 if num_params <= STDERR_AUTO_LIMIT else 1e-3)


# ---- argument checks ----------------------------------------------------------------------------

def _check_optimizer(optimizer) -> optax.GradientTransformation | None:
    if optimizer is None:
        return None  # chosen once the objective is known (_chosen_default_optimizer)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer must be an optax GradientTransformation such as optax.adam(1e-2); got "
            f"{type(optimizer).__name__}."
        )
    return optimizer


def _check_batch_size(batch_size, n: int) -> int | None:
    if batch_size is None:
        return None
    size = _checks.check_int(batch_size, "batch_size", minimum=1)
    if size > n:
        raise ValueError(f"batch_size must be at most the number of observations n = {n}; got "
                         f"{size}. Use batch_size=None for full-batch steps.")
    return None if size == n else size


def _check_stderr(stderr) -> bool | str:
    if stderr == "auto" or isinstance(stderr, (bool, np.bool_)):
        return stderr if isinstance(stderr, str) else bool(stderr)
    raise ValueError(f"stderr must be True, False or 'auto'; got {stderr!r}.")


# ---- the optimizer loop -------------------------------------------------------------------------

def _all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _train_chunk_impl(train: TrainState, data, key, start, count, num_steps, max_failures, *,
                      model: Model, objective: Objective, optimizer, batch_size: int | None,
                      length: int, num_rows: int | None = None, prefetched: bool = False,
                      row_block: int | None = None):
    """``count`` optimizer steps (traced, at most ``length``, the losses' length: one compiled
    chunk serves any count, :mod:`unnorm.pacing`) from global step ``start``; steps at or past
    ``num_steps`` are no-ops, and so are the steps after ``max_failures`` consecutive failures
    (the fit stops at the step that reached them). Returns the state and the ``length`` losses,
    of which the first ``count`` are the steps'. ``num_rows``: the observations are the first
    ``num_rows`` rows of ``data`` (rows split over devices, padded to a multiple of their
    count: :mod:`unnorm.sharding`). ``prefetched``: ``data`` is the pair (rows, indices) of
    each of the ``length`` steps' minibatches, read on the host from streamed data
    (:func:`unnorm.data_source.minibatches`). ``row_block``: full-batch steps sum the loss and
    gradient over blocks of that many rows (:func:`unnorm.data_source.blocked_value_and_grad`)."""
    if num_rows is not None:
        data = data[:num_rows]
    n = None if prefetched else data.shape[0]

    def loss_u(u, est_state, batch, step_key):
        return objective.loss(objective_params(model, objective, u), est_state, batch, step_key)

    value_and_grad = jax.value_and_grad(loss_u, has_aux=True)

    def one_step(train: TrainState, i):
        step = start + i
        # the unrolled generator (unnorm.threefry): jax.random's draws, without JAX's CPU loop
        step_key = threefry.fold_in(key, step)
        if prefetched:
            batch = Batch(data[0][i], data[1][i])
        elif batch_size is None:
            batch = Batch(data, jnp.arange(n))
        else:
            index = threefry.randint(threefry.fold_in(step_key, 1), (batch_size,), 0, n)
            batch = Batch(data[index], index)
        if batch_size is None and row_block is not None:
            def terms_u(u, x, index):
                return objective.terms(objective_params(model, objective, u), train.est_state,
                                       Batch(x, index), step_key)

            loss, grads = data_source.blocked_value_and_grad(terms_u, train.unconstrained,
                                                             data, row_block)
            est_state = train.est_state
        else:
            (loss, (est_state, _)), grads = value_and_grad(train.unconstrained,
                                                           train.est_state, batch, step_key)
        updates, opt_state = optimizer.update(grads, train.opt_state, train.unconstrained)
        unconstrained = optax.apply_updates(train.unconstrained, updates)
        active = (step < num_steps) & (train.consecutive_failures < max_failures)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        accept = active & finite

        def choose(new, old):
            # a leaf the step returned untouched (the same tracer: an estimator's fixed
            # tables such as KSD's kernel matrix) is kept as is, not copied through a select
            return jax.tree_util.tree_map(
                lambda a, b: a if a is b else jnp.where(accept, a, b), new, old)

        failed = active & ~finite
        unconstrained = choose(unconstrained, train.unconstrained)
        average, num_averaged = train.average, train.num_averaged
        if objective.traits.monte_carlo_gradient:
            # the running mean of the iterates of the second half of the run
            counted = accept & (2 * step >= num_steps)
            count = num_averaged + counted.astype(num_averaged.dtype)
            weight = jnp.where(counted, 1.0 / jnp.maximum(count, 1), 0.0)
            average = jax.tree_util.tree_map(lambda a, u: a + weight.astype(a.dtype) * (u - a),
                                             average, unconstrained)
            num_averaged = count
        train = TrainState(
            unconstrained,
            choose(opt_state, train.opt_state),
            choose(est_state, train.est_state),
            jnp.where(failed, train.consecutive_failures + 1,
                      jnp.where(accept, 0, train.consecutive_failures)),
            train.skipped + failed.astype(train.skipped.dtype),
            average,
            num_averaged,
        )
        return train, jnp.where(finite, loss, jnp.nan)

    return pacing.stored_loop(one_step, train, count, length, fill=jnp.nan)


_TRAIN_CHUNK_STATIC = ("model", "objective", "optimizer", "batch_size", "length", "num_rows",
                       "prefetched", "row_block")


@functools.cache
def _train_chunk():
    """``_train_chunk_impl`` jitted with unnorm's CPU compile options (:mod:`unnorm._xla`),
    built once so that every fit shares its compilation cache."""
    return jax.jit(_train_chunk_impl, static_argnames=_TRAIN_CHUNK_STATIC,
                   compiler_options=_xla.training_compiler_options())


def _has_converged(losses: np.ndarray, window: int, tol: float) -> bool:
    """The mean loss of the last ``window`` steps differs from that of the window before by at
    most ``tol``, relative."""
    if losses.size < 2 * window:
        return False
    last, previous = losses[-window:].mean(), losses[-2 * window:-window].mean()
    if not (np.isfinite(last) and np.isfinite(previous)):
        return False
    return bool(abs(last - previous) <= tol * max(abs(previous), abs(last), 1e-12))


# ---- the public function ------------------------------------------------------------------------

def fit(
    model: Model,
    data,
    estimator: str | Estimator = "sm",
    *,
    key,
    optimizer: optax.GradientTransformation | None = None,
    num_steps: int = 3000,
    batch_size: int | None = None,
    init: dict | None = None,
    stderr: bool | str = "auto",
    resample: bool | None = None,
    tol: float = 1e-6,
    window: int = 50,
    max_failures: int = 25,
    method: str = "auto",
    progress_bar: bool = True,
    devices: Any = None,
) -> FitResult:
    """Estimate θ of an unnormalized model from data, with standard errors.

    Parameters
    ----------
    model : Model
        The energy and its parameters (initial values are the starting point).
    data : array (n, *event_shape), NumPy memmap or row source
        Observations on the model's support. A memmap, or any object with ``__len__`` and
        ``__getitem__`` over row slices (``data[i:j]`` an array of ``j - i`` rows; an h5py or
        zarr dataset), is streamed: checked and read in blocks of at most 2²² values, never
        loaded whole (:mod:`unnorm.data_source`). Streamed data work with ``"sm"``,
        ``"dsm"``, ``"ssm"``, ``"nce"``, ``"pl"``, ``"rm"`` and ``"mpf"`` and need
        ``batch_size`` when the optimizer runs.
    estimator : str or Estimator
        A name (``"sm"``, ``"dsm"``, ``"ssm"``) or a configured instance
        (``un.estimators.DSM(sigma=0.1)``); see :mod:`unnorm.estimators`.
    key : jax.random key
        Drives minibatches and the estimator's noise; the same key gives the same result.
    optimizer : optax.GradientTransformation, optional
        Default ``optax.adam(1e-2)`` (``1e-3`` for models with more than
        ``STDERR_AUTO_LIMIT`` parameters). For estimators whose gradient is a Monte Carlo
        estimate (CD, PCD, MLE): Adam at 1e-2 whatever the size, constant for the first half
        of ``num_steps`` and decaying exponentially to 1e-4 over the second, so that the
        stochastic approximation's iterates settle (Robbins & Monro 1951). Steps are taken in
        the unconstrained space.
    num_steps : int
        Maximum number of optimizer steps.
    batch_size : int, optional
        Observations per step, drawn uniformly with replacement; ``None`` for full batch
        (refused for streamed data where the optimizer runs: each step would read every row).
    init : dict, optional
        Starting parameters (constrained space); default ``model.params``. An estimator with
        a start of its own may begin elsewhere when these are poor (NCE, where the model at
        ``init`` and its noise barely overlap: the member of the model nearest the noise).
    stderr : True, False or "auto"
        Compute sandwich standard errors; ``"auto"`` does so up to ``STDERR_AUTO_LIMIT`` scalar
        parameters.
    resample : bool, optional
        Draw the estimator's noise afresh at every step (as in neural-network training) instead
        of keying it on the observation (which makes the objective a fixed function whose
        minimizer the standard errors describe). Default: fresh for models with more than
        ``STDERR_AUTO_LIMIT`` parameters (neural energies), keyed otherwise.
    tol, window : float, int
        Stop when the mean loss over the last ``window`` steps changes by less than ``tol``
        relative to the window before. Minibatch or fresh-noise losses seldom meet this rule;
        they run ``num_steps`` steps (``converged`` is then false, without a warning). CD
        and PCD are judged instead by their iterates over the second half, against their
        standard errors, and by the likelihood's gradient at the estimate.
    max_failures : int
        Stop with :class:`FitError` after this many consecutive steps whose loss or gradient
        was not finite (each such step is skipped).
    method : {"auto", "optimizer"}
        ``"auto"`` solves in closed form when the objective is quadratic in θ, and starts with
        Newton steps on small deterministic objectives with the default optimizer;
        ``"optimizer"`` always runs the optimizer (then refines by Newton when standard errors
        are computed).
    progress_bar : bool
        Show a tqdm bar with the current loss (off when the ``CI`` variable is set).
    devices : None, int or list of jax.Device
        The devices the data rows are split over (``jax.sharding``, a 1-D mesh whose axis is
        ``"data"``; the parameters are replicated), as for :func:`unnorm.sample`. None
        (default): all of ``jax.devices()``; an int ``n``: the first ``n`` of them; or a list
        of devices. With one device the fit is the single-device one. The full-data passes
        (closed form, Newton, sandwich) and the full-batch optimizer steps run where the rows
        live, each device summing its own; PCD's and MLE's persistent chains are split over
        the same devices along their chain axis when their count is a multiple of the device
        count (replicated otherwise), each device advancing its own. The result equals the
        single-device fit up to the order of floating-point sums. ``data`` may be a global
        ``jax.Array`` whose rows belong to several processes (``jax.distributed``), split
        over its rows as ``jax.make_array_from_process_local_data`` builds it; every process
        then gets the same result.

    Returns
    -------
    FitResult

    Examples
    --------
    >>> import jax, numpy as np, unnorm as un
    >>> x = np.random.default_rng(0).normal(1.0, 2.0, size=(500, 2))
    >>> fit = un.fit(un.models.gaussian(2), x, "sm", key=jax.random.key(0), progress_bar=False)
    >>> round(float(fit.params["mu"][0]), 2) == round(float(x[:, 0].mean()), 2)
    True
    >>> list(fit.summary().columns)
    ['estimate', 'std_err', 'ci_lower', 'ci_upper']
    """
    started = time.perf_counter()
    if not isinstance(model, Model):
        raise TypeError(f"model must be an unnorm.Model; got {type(model).__name__}.")
    estimator = resolve(estimator)
    estimator.check(model)
    streamed = data_source.is_streamed(data)
    if streamed:
        # a memmap or row source: its rows are checked and read in host blocks where they
        # are used, never loaded whole (unnorm.data_source), on one device
        placement = sharding.choose_devices(
            jax.devices()[:1] if devices is None else devices, None)
        if placement.sharded:
            raise ValueError(
                "devices must name one device (or be None) when data is streamed (a memmap or "
                f"a row source): streamed rows are read in host blocks on one device; got "
                f"{len(placement.devices)} devices. Load the data as an array to split its "
                "rows over several devices.")
        data = data_source.as_source(data, model.support.event_shape, model.dtype)
        num_rows = data.shape[0]
    else:
        placement = sharding.choose_devices(devices, data)
        if placement.spanning is not None:
            # rows held by other processes: the host-side checks, starting values and
            # post-fit stages read a gathered copy, so that every process decides alike
            data = host_array(data)
        # checked in the dtype the fit computes in (the params'), where a value can overflow
        data_np = model.support.check_data(data, "data", dtype=model.dtype)
        num_rows = data_np.shape[0]
    key = _checks.check_key(key)
    num_steps = _checks.check_int(num_steps, "num_steps", minimum=1, maximum=_checks.INT32_MAX)
    batch_size = _check_batch_size(batch_size, num_rows)
    stderr = _check_stderr(stderr)
    tol = _checks.check_positive_float(tol, "tol")
    window = _checks.check_int(window, "window", minimum=2)
    max_failures = _checks.check_int(max_failures, "max_failures", minimum=1,
                                     maximum=_checks.INT32_MAX)
    progress_bar = _checks.check_bool(progress_bar, "progress_bar")
    solve_directly = _checks.check_choice(method, "method", ("auto", "optimizer")) == "auto"
    params0 = model.params if init is None else model.check_params(init, "init")
    # sized and typed on the host, as ravel_pytree would make them: flattening the arrays op
    # by op compiled two small programs on a process's first fit
    leaves0 = jax.tree_util.tree_leaves(params0)
    num_params = sum(int(np.size(leaf)) for leaf in leaves0)
    default_optimizer = optimizer is None and batch_size is None
    optimizer = _check_optimizer(optimizer)
    compute_se = stderr is True or (stderr == "auto" and num_params <= STDERR_AUTO_LIMIT)
    if resample is None:
        resample = num_params > STDERR_AUTO_LIMIT
    resample = _checks.check_bool(resample, "resample")

    dtype = jnp.result_type(*leaves0) if leaves0 else ravel_pytree(params0)[0].dtype
    # what the full-data passes and the optimizer read: the data themselves on one device,
    # their rows split over the devices, or the streamed source; what host-side checks read
    # (the plan, the sign check): the data, or a subsample of streamed data
    rows = data
    if streamed:
        data_host = view(data)
    else:
        # cast by NumPy (the same rounding), so that the transfer compiles no conversion
        data_host = np.asarray(data_np, dtype=dtype)
        data = rows = jnp.asarray(data_host)
        if placement.sharded:
            rows = (sharding.place_rows(data_np, placement.devices, dtype)
                    if placement.spanning is None
                    else sharding.global_rows(placement.spanning, dtype))
        elif devices is not None:
            data = rows = jax.device_put(data, placement.devices[0])
        check_finite_energies(model, params0, data)
    objective = _objective(estimator, model, resample)
    if optimizer is None:
        optimizer = _chosen_default_optimizer(num_params, num_steps,
                                              objective.traits.monte_carlo_gradient)
    if streamed:
        if objective.post_fit is not None:
            raise data_source.unsupported_estimator_error(estimator.name, data)
        data_source.check_rows(data, model, params0)
    n = data.shape[0]
    est_key, train_key = jax.random.split(key)
    # minibatches never read what init precomputes for full-batch steps (KSD's kernel
    # matrix), nor does a fit whose own finish sums over rows split over devices
    sharded_finish = placement.sharded and objective.traits.sharded_post_fit
    init_state = (objective.init if (batch_size is None and not sharded_finish)
                  or objective.init_minibatch is None else objective.init_minibatch)
    # what only looks at the data (NCE's noise fitted to its mean and covariance) sees a
    # subsample of streamed data, the data themselves otherwise
    est_state = init_state(params0, est_key, view(data))
    nuisance0 = None
    initial_state = est_state
    if objective.nuisance is not None:
        est_state, nuisance0 = objective.nuisance(params0, est_state, view(data))
    own_start = False
    if objective.start is not None and num_params <= STDERR_AUTO_LIMIT:
        # the estimator's own start (NCE: the model nearest its noise) where it judges the
        # given start poor, whether that is the model's defaults or the user's init: data far
        # from either leave its objective flat, and from a user's far-off init NCE ended as
        # far off as from the defaults, its log Z travelling with mu at the optimizer's pace
        started_at = objective.start(params0, est_state, view(data))
        if objective.nuisance is not None and started_at is not params0:
            # from the state as initialized, like the first call: the state the first call
            # returned is shaped otherwise (its noise fitted), and compiled a second program
            est_state, nuisance0 = objective.nuisance(started_at, initial_state, view(data))
        own_start = started_at is not params0
        params0 = started_at
    plan = _plan(objective, model, params0, data_host, solve_directly=solve_directly,
                 compute_se=compute_se, default_optimizer=default_optimizer, started=own_start)
    if streamed and batch_size is None and plan.start == "optimizer":
        raise data_source.full_batch_error(
            data, f"estimator {estimator.name!r} starts with the optimizer on this model (no "
            "closed form or Newton start)")

    # ---- solve: θ̂ by the planned stages --------------------------------------------------
    stages: list[str] = []
    losses, converged, steps, skipped = np.zeros(0), True, 0, 0
    theta = _initial_theta(model, params0, nuisance0)
    fitted = None
    # the full-data sums at the last point Newton evaluated: at the refined estimate, the
    # sandwich needs no pass of its own
    newton_sums: dict = {}
    if plan.start == "closed form":
        # None when the solution leaves the parameter space (a precision not positive
        # definite): the optimizer then takes over
        fitted = solvers.closed_form(objective, model, params0, est_state, rows, train_key,
                                     label=f"estimator {estimator.name!r}")
        if fitted is not None:
            stages.append("closed form")
    elif plan.start == "newton" and objective.post_fit is None:
        # from an estimator's own start, near the minimum, Newton runs in coordinates scaled
        # to its curvatures there and trust-region steps follow, as after the optimizer
        after_newton: list | None = [] if own_start else None
        refined, newton_converged = _refine(model, objective, theta, est_state, rows,
                                            train_key, stages=after_newton, sums=newton_sums,
                                            prescale=own_start)
        if newton_converged:
            theta = refined
            fitted = objective_params(model, objective, theta)
            stages.append("newton")
            stages.extend(after_newton or [])
    elif plan.start == "newton":
        # the estimator's own finish runs the Newton steps (KSD's U-statistic)
        fitted = objective_params(model, objective, theta)
    optimizer_converged, newton_converged = True, None
    snapshots: list = []
    optimizer_theta = None
    if fitted is None:
        if streamed and batch_size is None:
            raise data_source.full_batch_error(
                data, f"the {stages[-1] if stages else plan.start} start of estimator "
                f"{estimator.name!r} gave no estimate here, so the optimizer takes over")
        theta, losses, optimizer_converged, steps, skipped, est_state, snapshots = _optimize(
            model, objective, optimizer, theta, est_state, rows, train_key, num_steps,
            batch_size, tol, window, max_failures, progress_bar, estimator.name)
        converged = optimizer_converged
        stages.append("optimizer")
        if plan.refine:
            optimizer_theta = theta
            stages.append("newton")
            theta, newton_converged = _refine(model, objective, theta, est_state, rows,
                                              train_key, stages=stages, sums=newton_sums)
            converged = newton_converged
        fitted = objective_params(model, objective, theta)
        _check_finite_estimate((theta, fitted), steps, estimator.name)

    if skipped:
        warnings.warn(f"{skipped} of {steps} optimizer steps had a non-finite loss or gradient "
                      "and were skipped (NaN in fit.loss).", RuntimeWarning, stacklevel=2)
    message = _non_convergence(estimator.name, optimizer_converged, newton_converged, steps,
                               num_steps, window, tol, objective.traits.deterministic
                               and batch_size is None,
                               _scale_hint(data if streamed else data_np))
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    # ---- finish: the estimator's own stage, or the driver's sandwich ----------------------
    covariance, chains, excluded = None, None, None
    if objective.post_fit is not None:
        post = objective.post_fit(fitted, est_state, rows if sharded_finish else data,
                                  jax.random.split(train_key)[0], compute_se, progress_bar,
                                  devices=placement.devices if placement.sharded else None)
        fitted, covariance, chains = post.params, post.covariance, post.chains
        stages.extend(stage for stage in (post.refined_by, post.covariance_from) if stage)
        boundary = post.boundary
        if boundary is not None and "optimizer" in stages:
            boundary = _travelled(model, objective, boundary, snapshots, steps)
        hessian = post.hessian
        if boundary is not None and np.any(boundary.excluded):
            excluded = _warn_unbounded(model, objective, fitted, boundary,
                                       repr(estimator.name))
            if covariance is not None:
                covariance = np.array(covariance, dtype=float)
                covariance[excluded, :] = np.nan
                covariance[:, excluded] = np.nan
            if hessian is not None:
                hessian = _without(np.asarray(hessian, dtype=float), boundary.excluded)
        if covariance is not None and hessian is not None:
            covariance = _mark_post_fit_unidentified(model, objective, fitted, covariance,
                                                     hessian, repr(estimator.name))
    elif compute_se:
        covariance = _covariance(model, objective, fitted, est_state, rows, train_key,
                                 in_constrained=(stages == ["closed form"]),
                                 label=repr(estimator.name),
                                 refined_at=_sums_at(theta, newton_sums) if "newton" in stages
                                 else None)
        stages.append("sandwich")
        if objective.check_estimate is not None:
            doubt = objective.check_estimate(fitted, est_state, view(data))
            if doubt and not np.all(np.isnan(covariance)):
                covariance = _mark_doubtful(covariance, objective, fitted,
                                            repr(estimator.name), doubt)
    if objective.post_fit is not None and post.converged is not None:
        converged = post.converged
    elif objective.traits.monte_carlo_gradient and "optimizer" in stages:
        # a stochastic loss never settles: the fit has converged when its iterates have
        # stopped drifting, judged against the estimate's own standard errors, or without
        # them against the iterates' own Monte Carlo spread
        converged = _iterates_settled(model, objective, snapshots, steps, covariance,
                                      None if objective.post_fit is None else boundary,
                                      n, excluded)
    if optimizer_theta is not None and covariance is not None:
        message = _refinement_shift(model, objective, optimizer_theta, fitted, covariance,
                                    data, repr(estimator.name), bool(newton_converged),
                                    "trust region" in stages)
        if message:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
    params, nuisance = (fitted, None) if objective.nuisance is None else fitted
    # an energy that falls without bound away from the data is a density's sign, not a model
    # at the fitted parameters only: a neural energy at its random initial weights is
    # often unbounded below, which says nothing about the user's sign convention
    warn_energy_sign(model, {"fitted": params}, data_host, RuntimeWarning,
                     stacklevel=3)
    se_tree = nuisance_se = interval_grid = None
    if covariance is not None:
        covariance = np.asarray(covariance, dtype=float)
        # the free parameters are at most the constrained ones: counted (which maps the
        # estimate to the unconstrained space) only when n is that small
        num_free = (int(ravel_pytree(_initial_theta(model, params, nuisance))[0].size)
                    if n < len(covariance) else n)
        if n < num_free and not np.all(np.isnan(covariance)):
            # the sandwich's middle, a mean of n outer products, has rank at most n: with
            # fewer observations than free parameters some standard errors come out as 0
            warnings.warn(
                f"{n} observation{'s' if n > 1 else ''} for {num_free} free parameters: the "
                f"standard errors of estimator {estimator.name!r} cannot be estimated from "
                "fewer observations than free parameters, and are NaN (the estimate itself "
                "is not identified by so few data). Use more data or fewer parameters.",
                RuntimeWarning, stacklevel=2)
            covariance = np.full_like(covariance, np.nan)
        interval_grid = _interval_grid(model, objective, fitted, covariance)
        se_flat = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
        num_model = _flat_size(params)
        se_tree = _unravel_numpy(params, se_flat[:num_model])
        if nuisance is not None:
            nuisance_se = _unravel_numpy(nuisance, se_flat[num_model:])
        covariance = covariance[:num_model, :num_model]

    return FitResult(
        params=jax.tree_util.tree_map(np.asarray, params),
        stderr=se_tree,
        covariance=covariance,
        loss=losses,
        converged=bool(converged),
        num_steps=int(steps),
        wall_time=time.perf_counter() - started,
        estimator=estimator.name,
        method=" + ".join(stage for stage in stages if stage in SOLVE_STAGES),
        options=estimator.options(),
        skipped_steps=int(skipped),
        num_observations=int(n),
        chains=chains,
        nuisance=None if nuisance is None else jax.tree_util.tree_map(np.asarray, nuisance),
        nuisance_stderr=nuisance_se,
        stages=tuple(stages),
        interval_grid=interval_grid,
    )


#: A Monte Carlo fit (CD, PCD) has converged when the means of its iterates over the third and
#: the fourth quarter of the run differ by at most this many standard errors in every
#: parameter (its estimate, the mean of the second half, is then within half a standard error
#: of either quarter's), and the likelihood's gradient at the estimate is at most what an
#: offset of this many standard errors would give, beyond its Monte Carlo error.
MAX_ITERATE_DRIFT = 1.0

#: The family-wise level (Bonferroni over the parameters) of the test of the likelihood's
#: gradient at the estimate against its Monte Carlo error, and, where no draws of the fitted
#: model give standard errors, of the test of "the third and the fourth quarter's mean
#: iterates are equal".
ITERATE_TREND_LEVEL = 0.01


def _second_half(model, objective, snapshots, steps: int, unconstrained: bool = False):
    """The iterates of the third and the fourth quarter of the optimizer's run (taken at chunk
    ends, mapped to the flattened constrained parameters, or flattened as they are with
    ``unconstrained``), as two arrays (iterates, params), and the steps at which they were
    taken; None when either quarter has none."""
    third = [(step, u) for step, u in snapshots if 2 * step > steps and 4 * step <= 3 * steps]
    fourth = [(step, u) for step, u in snapshots if 4 * step > 3 * steps]
    if not third or not fourth:
        return None
    to_flat = _params_map(model, objective)

    def flat(iterates):
        return np.array([np.asarray(ravel_pytree(u if unconstrained else to_flat(u))[0],
                                    dtype=float) for _, u in iterates])

    return flat(third), flat(fourth), np.array([step for step, _ in third + fourth], float)


def _iterate_drift(third: np.ndarray, fourth: np.ndarray, covariance,
                   excluded=None) -> float | None:
    """The largest difference, in standard errors, between the mean iterate of the third
    quarter and that of the fourth, over the parameters not ``excluded`` (a mask); None where
    no standard error is finite and positive."""
    se = np.sqrt(np.clip(np.diag(np.asarray(covariance, dtype=float)), 0.0, None))
    gap = np.abs(fourth.mean(axis=0) - third.mean(axis=0))
    judged = np.ones(se.shape, bool) if excluded is None else ~excluded
    varying = judged & ~(se <= 0)
    if not np.any(varying) or not np.all(np.isfinite(se[varying])):
        # no scale to judge the drift by (NaN standard errors: parameters not identified)
        return None
    return float(np.max(gap[varying] / se[varying], initial=0.0))


def _information_drift(third_u: np.ndarray, fourth_u: np.ndarray, boundary, n: int) -> float:
    """The largest difference between the mean unconstrained iterate of the third quarter and
    that of the fourth, in standard errors from the fitted model's Fisher information
    (``boundary.unit_se / √n``: Cramér–Rao, :mod:`unnorm.estimators.boundary`); the
    coordinates along which the likelihood is unbounded or flat are left out, and so are
    those with no finite standard error."""
    gap = np.abs(fourth_u.mean(axis=0) - third_u.mean(axis=0))
    se = np.asarray(boundary.unit_se, dtype=float) / np.sqrt(n)
    judged = np.isfinite(se) & (se > 0)
    return float(np.max(gap[judged] / se[judged], initial=0.0))


def _iterate_trend(third: np.ndarray, fourth: np.ndarray, steps: np.ndarray):
    """Per parameter, the difference of the fourth and the third quarter's mean iterates over
    its Monte Carlo standard error, and the critical value those ratios are held to; None with
    fewer than four iterates.

    The standard error is ``s √(1/n₃ + 1/n₄)``, with ``s`` the spread of the iterates about a
    straight line fitted to the second half: a trend goes into the line, not into ``s``, so an
    iterate still travelling steadily is not mistaken for noise. The iterates are taken every
    100 steps, far enough apart that their lag-1 autocorrelations about the line were between
    -0.7 and 0.3 in PCD fits that had converged, so they are treated as independent. Under no
    trend the ratios then follow Student's t with ``n₃ + n₄ − 2`` degrees of freedom; the
    critical value is its ``1 − α/(2p)`` quantile for ``p`` parameters (Bonferroni), so that a
    settled fit of a thousand parameters is called unsettled with probability at most ``α``.
    """
    from scipy import stats  # a dependency of JAX and ArviZ

    iterates = np.concatenate([third, fourth])
    df = iterates.shape[0] - 2
    if df < 2:
        return None
    design = np.stack([np.ones_like(steps), steps - steps.mean()], axis=1)
    coefficients = np.linalg.lstsq(design, iterates, rcond=None)[0]
    residuals = iterates - design @ coefficients
    spread = np.sqrt(np.sum(residuals**2, axis=0) / df)
    gap = fourth.mean(axis=0) - third.mean(axis=0)
    se = spread * np.sqrt(1.0 / third.shape[0] + 1.0 / fourth.shape[0])
    # a parameter that did not move at all (spread and gap both zero) has not drifted
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(gap == 0, 0.0, np.abs(gap) / se)
    critical = float(stats.t.ppf(1 - ITERATE_TREND_LEVEL / (2 * gap.size), df))
    return ratio, critical


def _at_maximum(boundary, n: int) -> bool:
    """Whether the likelihood's gradient at the fitted values (``boundary.score``,
    :mod:`unnorm.estimators.boundary`) is in every coordinate judged at most what an estimate
    ``MAX_ITERATE_DRIFT`` standard errors from the maximum would give, beyond its Monte Carlo
    error: ``|score_j| ≤ z·mcse_j + MAX_ITERATE_DRIFT·√(F_jj/n)``, the gradient of a
    coordinate off by ``1/√(n F_jj)`` (the lower bound on its standard error) being
    ``√(F_jj/n)``, with ``z`` the normal quantile ``1 − ITERATE_TREND_LEVEL/(2p)`` over the
    ``p`` coordinates (Bonferroni), over the coordinates with a finite standard error.
    Iterates frozen by a decaying step size short of the maximum fail it."""
    from scipy import stats  # a dependency of JAX and ArviZ

    score = np.abs(np.asarray(boundary.score, dtype=float))
    mcse = np.asarray(boundary.score_mcse, dtype=float)
    offset = MAX_ITERATE_DRIFT * np.sqrt(np.asarray(boundary.information, dtype=float) / n)
    # a coordinate with no finite standard error (the information does not identify it) is
    # judged neither here nor by its drift
    judged = (np.isfinite(score) & np.isfinite(mcse) & (mcse > 0)
              & np.isfinite(np.asarray(boundary.unit_se, dtype=float)))
    if not np.any(judged):
        return True
    critical = float(stats.norm.ppf(1 - ITERATE_TREND_LEVEL / (2 * np.count_nonzero(judged))))
    return bool(np.all(score[judged] <= critical * mcse[judged] + offset[judged]))


def _iterates_settled(model, objective, snapshots, steps: int, covariance, boundary=None,
                      n: int = 0, excluded=None) -> bool:
    """Whether a Monte Carlo fit's iterates have stopped drifting over the second half of its
    run: by ``MAX_ITERATE_DRIFT`` standard errors of the estimate where these exist
    (:func:`_iterate_drift`), else by as many of the lower bounds on them that the fitted
    model's Fisher information gives (``boundary``, :func:`_information_drift`), else by a
    test against the iterates' own spread (:func:`_iterate_trend`); and, with ``boundary``,
    where the likelihood's gradient says they stopped at its maximum (:func:`_at_maximum`).
    Parameters along which the likelihood is unbounded or flat (``boundary``; ``excluded``,
    the constrained parameters that move with them) are not judged. False when the run left
    too few iterates to judge."""
    halves = _second_half(model, objective, snapshots, steps)
    if halves is None or (boundary is not None and not _at_maximum(boundary, n)):
        return False
    third, fourth, taken = halves
    if covariance is not None:
        drift = _iterate_drift(third, fourth, covariance, excluded)
        if drift is not None:
            return drift <= MAX_ITERATE_DRIFT
    if boundary is not None:
        third_u, fourth_u, _ = _second_half(model, objective, snapshots, steps,
                                            unconstrained=True)
        return _information_drift(third_u, fourth_u, boundary, n) <= MAX_ITERATE_DRIFT
    if excluded is not None:
        third, fourth = third[:, ~excluded], fourth[:, ~excluded]
    trend = _iterate_trend(third, fourth, taken)
    if trend is None:
        return False
    ratio, critical = trend
    return bool(np.all(np.isfinite(ratio)) and np.max(ratio, initial=0.0) <= critical)


def _non_convergence(name: str, optimizer_converged: bool, newton_converged: bool | None,
                     steps: int, num_steps: int, window: int, tol: float,
                     settles: bool, location: str = "") -> str | None:
    """The warning of a fit that did not converge, naming the stage that did not: the
    optimizer (it ran all ``num_steps``) or the Newton refinement after it (whatever the
    optimizer did, which the message states with its steps and limit). ``settles``: the loss
    is deterministic and full-batch, so the optimizer's relative-change rule can be met (a
    stochastic loss rarely meets it: not worth a warning). ``location``: where badly scaled
    data lie (:func:`_scale_hint`), for a hint, or empty."""
    if newton_converged is False:
        before = (f"the optimizer before it stopped after {steps} of num_steps={num_steps} "
                  "steps, its loss settled" if optimizer_converged else
                  f"the optimizer before it ran all {steps} steps (num_steps={num_steps})")
        return (f"the Newton refinement of the {name!r} fit did not reach a minimum of the "
                f"full-data objective to working precision ({before}); the estimate and its "
                "standard errors may be off. Lower tol or raise num_steps to let the optimizer "
                "go further, or start nearer the minimizer (init=...)."
                + (f" The data may be badly scaled ({location}): center and scale them." if
                   location else ""))
    if newton_converged is None and not optimizer_converged and settles:
        return (f"the {name!r} fit did not converge: the optimizer ran all {steps} steps "
                f"(num_steps={num_steps}) and the mean loss of its last {window} steps still "
                f"changed by more than tol={tol:g} relative to the {window} before; raise "
                "num_steps or change the optimizer's learning rate.")
    return None


#: A refinement that moves a parameter by more than this many standard errors from the
#: optimizer's answer says the optimizer stopped far from the minimum (a converged optimizer
#: leaves it within a fraction of a standard error, and rounding moves it by far less); on a
#: deterministic objective the usual cause is data far from the origin or on a large scale.
MAX_REFINEMENT_SHIFT = 100.0


def _refinement_shift(model, objective, optimizer_theta, fitted, covariance, data,
                      label: str, converged: bool, trust_region: bool) -> str | None:
    """The warning of a refinement that moved parameters by more than
    ``MAX_REFINEMENT_SHIFT`` standard errors from the optimizer's answer, naming them, or
    None."""
    start = np.asarray(ravel_pytree(_params_map(model, objective)(optimizer_theta))[0],
                       dtype=float)
    end = np.asarray(ravel_pytree(fitted)[0], dtype=float)
    se = np.sqrt(np.clip(np.diag(np.asarray(covariance, dtype=float)), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where((se > 0) & np.isfinite(se), np.abs(end - start) / se, 0.0)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    moved = np.flatnonzero(shift > MAX_REFINEMENT_SHIFT)
    if not moved.size:
        return None
    names = _fitted_names(objective, fitted)
    moved = moved[np.argsort(-shift[moved])]
    listed = "; ".join(f"{names[i]} from {start[i]:.6g} to {end[i]:.6g} ({shift[i]:.3g} "
                       "standard errors)" for i in moved[:3])
    if len(moved) > 3:
        listed += f"; and {len(moved) - 3} more"
    outcome = ("The estimate is the refined one" + (
        ", reached by trust-region steps after damped Newton's" if trust_region else "")
        if converged else
        "The refinement did not converge either, so the estimate may be off")
    hint = _scale_hint(data)
    cause = (f"The data may be badly scaled for the optimizer ({hint}): its steps are about "
             "the learning rate in the unconstrained parameters, so it crosses little of a "
             "distance of thousands. Center and scale the data (and map the estimates back), "
             "or start from values near the data (init=...), or raise num_steps." if hint else
             "Raise num_steps or change the optimizer's learning rate, or start from values "
             "nearer the estimate (init=...).")
    return (f"the optimizer of the {label} fit stopped far from the minimum of the full-data "
            f"objective: its Newton refinement moved {listed}. {outcome}. {cause}")


def _scale_hint(data) -> str:
    """Where the data lie, when some coordinate is more than 10 of its standard deviations from
    the origin or has a standard deviation outside [1e-3, 1e3] (the scales at which Adam's
    steps of about 1e-2 in the unconstrained parameters cross the distance in a few thousand
    steps); otherwise empty. Streamed data are judged by their subsample."""
    data = view(data)
    flat = np.asarray(data, dtype=float).reshape(len(data), -1)
    if len(flat) < 2:
        return ""
    mean, sd = flat.mean(axis=0), flat.std(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.abs(mean) > 10 * sd
    if np.any(offset | (sd > 1e3) | ((sd < 1e-3) & (sd > 0))):
        return data_location(data)
    return ""


def _off_scale(data) -> bool:
    """Whether some coordinate of the data has a standard deviation outside [1e-3, 1e3], the
    scales at which the optimizer's steps of about 1e-2 suit a location (see
    :func:`_scale_hint`)."""
    flat = np.asarray(view(data), dtype=float)
    flat = flat.reshape(len(flat), -1)
    if len(flat) < 2:
        return False
    sd = flat.std(axis=0, ddof=1)
    return bool(np.any((sd > 1e3) | ((sd < 1e-3) & (sd > 0))))


class Plan(NamedTuple):
    """The stages of a fit, read from the objective's traits before anything runs.

    ``start``: ``"closed form"`` (a quadratic objective: one linear solve), ``"newton"`` (a
    small deterministic objective that is convex for this energy, or whose Newton steps cost a
    few optimizer steps: Newton from the initial values, the optimizer only if Newton does not
    converge) or ``"optimizer"``. ``refine``:
    after the optimizer, Newton steps on the full-data objective, so that the sandwich is
    evaluated at the exact minimizer it assumes (deterministic objectives with standard errors,
    unless the estimator finishes the fit itself)."""

    start: str
    refine: bool


#: the stages that find θ̂ (``FitResult.method`` joins those that ran); the others compute
#: the covariance
SOLVE_STAGES = ("closed form", "newton", "optimizer", "trust region", "Monte Carlo MLE")


def _plan(objective: Objective, model: Model, params0, data, *, solve_directly: bool,
          compute_se: bool, default_optimizer: bool, started: bool = False) -> Plan:
    traits = objective.traits
    refine = compute_se and traits.deterministic and objective.post_fit is None
    if not (solve_directly and traits.deterministic):
        return Plan("optimizer", refine)
    if (started and compute_se and default_optimizer and objective.post_fit is None
            and _off_scale(data)):
        # the estimator's own start (NCE: the model nearest its noise, which is fitted to
        # the data) is near the minimum, where Newton converges; on data whose scale is far
        # from 1 the optimizer's steps, about its learning rate in each parameter, are far
        # from the data's (a location of data on a scale of 1e-20 in float64 went 1e7
        # standard deviations away, beyond the refinement's reach). Where Newton fails,
        # the optimizer takes over from the start.
        return Plan("newton", refine)
    score_checked = traits.quadratic_if_linear_score
    if score_checked and solvers.score_is_linear(model, params0, data):
        # refine: for the optimizer that takes over when the solution leaves the parameter space
        return Plan("closed form", refine)
    # A non-convex objective (an RBM's NCE, ratio matching) took Newton from the start to a
    # local minimum of log-likelihood -29 where the optimizer's basin gave -3.68: Newton goes
    # first only where the objective is convex, or where the optimizer's steps cost so much
    # that its convergence would dominate the fit (cheap_newton).
    if compute_se and default_optimizer and (
            traits.cheap_newton or (traits.convex_if_linear_energy
                                    # an energy affine in θ has a score affine in θ: where
                                    # the score was not, the energy is not (and its check
                                    # would compile a program of its own)
                                    and not score_checked
                                    and solvers.energy_is_linear(model, params0, data))):
        return Plan("newton", refine)
    return Plan("optimizer", refine)


def _initial_theta(model: Model, params0, nuisance0):
    """The optimizer's starting point: unconstrained params, paired with the objective's
    nuisance parameters when it has some."""
    u0 = model.to_unconstrained(params0)
    if nuisance0 is None:
        return u0
    return u0, jax.tree_util.tree_map(jnp.asarray, nuisance0)


def _optimize(model, objective, optimizer, theta0, est_state, data, key, num_steps, batch_size,
              tol, window, max_failures, progress_bar, estimator_name):
    u = theta0
    sharded = isinstance(data, sharding.RowShards)
    if sharded and objective.place_state is not None:
        # the persistent chains split over the rows' devices: each advances its own
        est_state = objective.place_state(
            est_state, functools.partial(sharding.split_chains, mesh=data.mesh))
    averaging = ((u, jnp.asarray(np.int32(0))) if objective.traits.monte_carlo_gradient
                 else ((), ()))
    train = TrainState(u, optimizer.init(u), est_state, jnp.asarray(np.int32(0)),
                       jnp.asarray(np.int32(0)), *averaging)
    # Convergence is judged, and a Monte Carlo fit's iterate kept, every `length` steps; each
    # compiled call runs as many of them as fit in about half a second (unnorm.pacing), which
    # changes neither: step keys are fold_in(key, step) and the checks come at the same steps.
    length = min(num_steps, 100)
    streamed = isinstance(data, RowSource)
    if streamed:
        # the rows of a call's steps are read on the host before it: fewer steps a call for
        # large batches, so that they stay within a bounded number of values
        length = data_source.minibatch_length(batch_size, int(np.prod(data.shape[1:])), length)
    # a full-batch step over many rows sums over row blocks, so that its peak memory does
    # not grow with n; small fits keep the one pass over all rows
    row_block = (None if streamed or sharded or batch_size is not None
                 else data_source.full_batch_block_rows(
                     data.shape[0], _flat_size(theta0), objective))
    losses: list[np.ndarray] = []
    converged, done, pace = False, 0, None
    # the iterate at each block's end, with its step: how a Monte Carlo fit's iterates drift
    # over its second half (_iterates_settled)
    snapshots: list[tuple[int, Any]] = []
    chunk = functools.partial(_train_chunk(), model=model, objective=objective,
                              optimizer=optimizer, batch_size=batch_size, length=length,
                              prefetched=streamed, row_block=row_block)
    if sharded:
        # the same chunk on the rows where they live, its outputs replicated so that every
        # process can read them, but for split chains, which stay where they are
        options = tuple(sorted(_xla.training_compiler_options().items()))
        chunk = functools.partial(
            sharding.placed_jit(_train_chunk_impl, data.mesh, _TRAIN_CHUNK_STATIC, options,
                                (train, 0)),
            model=model, objective=objective, optimizer=optimizer, batch_size=batch_size,
            length=length, num_rows=data.num_rows if data.padded else None)
    chunk_data = data.array if sharded else data
    spans_processes = sharded and not data.array.is_fully_addressable
    with tqdm(total=num_steps, disable=_checks.progress_disabled(progress_bar),
              desc=f"fit {estimator_name}", leave=False) as bar:
        try:
            while done < num_steps:
                block_end = min(done - done % length + length, num_steps)
                count = pacing.next_count(pace, block_end - done, length)
                if spans_processes:
                    # every process runs as many steps a call as process 0: the chunk is
                    # one partitioned program, whose calls and trip counts must agree on
                    # all of them (each one's own pace could differ under load, and hang)
                    count = int(from_first_process(np.int32(count)))

                def call(train=train, done=done, count=count):
                    # streamed: the rows the steps draw, the in-memory fit's rows for this key
                    rows = (data_source.minibatches(data, key, done, count, length, batch_size)
                            if streamed else chunk_data)
                    train, chunk_losses = chunk(
                        train, rows, key, jnp.asarray(done), jnp.asarray(count),
                        jnp.asarray(num_steps), jnp.asarray(max_failures))
                    return train, np.asarray(chunk_losses)[:count]  # waits for the call

                (train, chunk_losses), pace = pacing.timed(call, count)
                losses.append(chunk_losses)
                done += count
                bar.update(count)
                finite = chunk_losses[np.isfinite(chunk_losses)]
                if finite.size:
                    bar.set_postfix(loss=f"{finite[-1]:.5g}")
                history = np.concatenate(losses)
                if int(train.consecutive_failures) >= max_failures:
                    _raise_failures(model, objective, train, history, max_failures,
                                    estimator_name, data)
                if done < block_end:
                    continue
                if objective.traits.monte_carlo_gradient:
                    snapshots.append((done, train.unconstrained))
                if _has_converged(history, window, tol):
                    converged = True
                    break
        except KeyboardInterrupt as err:
            raise pacing.interrupted(
                err, f"while fitting {estimator_name!r}: in the optimizer stage, after {done} "
                f"of num_steps={num_steps} steps") from None
    theta = train.unconstrained
    if objective.traits.monte_carlo_gradient and int(train.num_averaged) > 0:
        theta = train.average
    if sharded:
        # the later stages run on one device per process (the post-fit samplings) or take
        # the rows' mesh themselves (the full-data passes)
        theta, train = sharding.uncommitted((theta, train))
    return (theta, np.concatenate(losses), converged, done, int(train.skipped), train.est_state,
            snapshots)


def _raise_failures(model, objective, train, history, max_failures, estimator_name, data):
    """The FitError of a run of ``max_failures`` failed steps. The steps after the one that
    reached max_failures were no-ops: the parameters are those of that step, which the losses
    (NaN = failed) locate."""
    last = _failure_run_end(history, max_failures)
    first = last - max_failures + 1
    params = objective_params(model, objective, train.unconstrained)
    if objective.nuisance is not None:
        params = {**params[0], **{f"nuisance.{k}": v for k, v in params[1].items()}}
    raise FitError(
        f"estimator {estimator_name!r} stopped at step {first}: from there on "
        f"{max_failures} consecutive steps (max_failures={max_failures}), steps "
        f"{first} to {last} (numbered from 0), had a non-finite loss or gradient "
        "and were skipped. The parameters there "
        f"were:\n{format_params(params)}\nCheck the energy for "
        f"overflow (e.g. exp of large values) and the scale of the data "
        f"({data_scale(view(data))}), lower the learning rate, or start from other "
        "init values."
    )


def _check_finite_estimate(estimate, steps: int, estimator_name: str) -> None:
    """A NaN never leaves the optimizer as an estimate. Its steps are skipped when the loss or
    gradient is not finite, but an update can still overflow from finite gradients (a learning
    rate too large, or NaN), and so can the map to the constrained space."""
    # on the host: the estimate is small, and op by op the check compiled four programs
    if not all(np.all(np.isfinite(np.asarray(leaf)))
               for leaf in jax.tree_util.tree_leaves(estimate)):
        raise FitError(
            f"estimator {estimator_name!r}: the optimizer's updates made the parameters NaN or "
            f"infinite within its {steps} steps, although the losses and gradients were "
            "finite. Check the optimizer's settings (a learning rate that is too large, "
            "negative or NaN) or pass optimizer=None for the default."
        )


def _failure_run_end(losses: np.ndarray, run: int) -> int:
    """The first step that ends ``run`` consecutive failed steps (NaN losses)."""
    count = 0
    for step, failed in enumerate(np.isnan(losses)):
        count = count + 1 if failed else 0
        if count == run:
            return step
    raise AssertionError("no run of failures in the losses")  # the caller saw one


def _refine(model, objective, u, est_state, data, key, stages: list | None = None,
            sums: dict | None = None, prescale: bool = False):
    """Damped Newton on the full-data objective from ``u``: the point and whether it is a
    minimum. Given ``stages``, continued by trust-region Newton steps, with ``"trust region"``
    added to ``stages`` when they moved the point. Far from a minimum (data far from the origin
    leave the optimizer short of it) damped Newton either fails or stops where its tests,
    comparing curvatures of 1e-24 and 1 on one scale, see a minimum; the trust region crosses
    the distance, from the optimizer's answer when Newton failed (and returns that answer as
    converged when it finds it a minimum to working precision). From a point Newton left at a
    minimum it returns that point unchanged, so well-scaled fits are as they were.

    Where the sums at the point found underflow the working dtype (:func:`_rescaled_sums`: a
    location of data on a scale of 1e10 has a curvature Λ² of 1e-40 under score matching, 0 in
    float32, and Newton stopped 1e4 standard errors short, calling it a minimum), the search
    goes on from there in coordinates scaled to unit curvature (Newton's method is unchanged
    by such a change of coordinates, its rounding is not), at most ``MAX_RESCALED_PASSES``
    times.

    ``prescale``: ``u`` is near the minimum (an estimator's own start), so that where the
    Hessian's diagonal there spans more than ``MAX_CURVATURE_RANGE`` the search runs in
    coordinates scaled to unit curvature from the start (:func:`_wide_curvature_scale`); from
    an optimizer's answer far off, its curvatures need not be the minimum's (score matching's
    location on data of scale 1e10, scaled by them, ended 32 standard errors off).

    ``sums`` (emptied first) receives the full-data sums (:class:`~unnorm.solvers.FullData`)
    of the last point evaluated, keyed by the point's bytes, with the coordinate scale they
    were computed in (None: unscaled): the refinement returns a point it evaluated, whose sums
    (``J`` included) the sandwich reuses (:func:`_sums_at`)."""
    flat, unravel = ravel_pytree(u)
    static = dict(model=model, objective=objective, constrained=False)
    sums = {} if sums is None else sums
    dtype = flat.dtype

    def at(point, scale):
        """The parameters at ``point`` of the coordinates scaled by ``scale``."""
        if scale is None:
            return point
        return jnp.asarray(np.asarray(point, dtype=float) * scale, dtype=dtype)

    def derivs_in(scale):
        scale_arg = None if scale is None else jnp.asarray(scale, dtype=dtype)

        def derivs(point):
            f = at(point, scale)
            key_ = np.asarray(f).tobytes()
            # the trust region starts where damped Newton stopped, whose last evaluation was
            # there: one full-data pass, not two
            found = sums.get(key_)
            if found is None or found[1] is not scale:
                found = (solvers.derivatives(f, u, data, est_state, key, scale=scale_arg,
                                             **static), scale)
                sums.clear()
                sums[key_] = found
            return found[0][:3]

        return derivs

    # a tenth of a standard error (Σz² ≤ 0.01): the decrement of a mean over n rows is Σz²/n
    negligible = 1e-2 / max(int(data.shape[0]), 1)

    def minimize(start, scale):
        derivs = derivs_in(scale)
        refined, converged = solvers.newton(derivs, start, negligible=negligible)
        if stages is None:
            return refined, converged, False
        begin = refined if converged else start
        far, far_converged = trust_region_newton(derivs, begin, negligible=negligible)
        if far_converged:
            # where damped Newton failed, the trust region may find the optimizer's answer
            # already a minimum to working precision (a location of 1e6 held to a spacing of
            # 0.0625, which Newton's tests do not allow for)
            return far, True, far is not begin
        return refined, converged, False

    sums.clear()
    scale = _wide_curvature_scale(derivs_in(None), flat, sums, dtype) if prescale else None
    point, converged, crossed = minimize(flat if scale is None
                                         else jnp.asarray(np.asarray(flat, float) / scale,
                                                          dtype=dtype), scale)
    for _ in range(MAX_RESCALED_PASSES):
        found = sums.get(np.asarray(at(point, scale)).tobytes())
        if found is None:
            break
        hessian = np.asarray(found[0].hessian, dtype=float)
        outer = np.asarray(found[0].score_outer, dtype=float)
        if not (np.all(np.isfinite(hessian)) and np.all(np.isfinite(outer))
                and np.any(underflowing(hessian, outer, dtype))):
            break
        theta = np.asarray(at(point, scale), dtype=float)
        scale = unit_curvature_scale(hessian, 1.0 if scale is None else scale, dtype)
        point, converged, moved = minimize(jnp.asarray(theta / scale, dtype=dtype), scale)
        crossed = crossed or moved
    if crossed:
        stages.append("trust region")
    return unravel(at(point, scale)), converged


#: a Hessian whose diagonal spans more than this ratio is refined in coordinates scaled to unit
#: curvature from the start: eigenvalues and solves in float64 lose the small curvatures
#: beside the large ones
MAX_CURVATURE_RANGE = 1e8


def _wide_curvature_scale(derivs, flat, sums: dict, dtype):
    """The coordinate scale to refine in from ``flat``: None (unscaled) unless the diagonal of
    the Hessian there spans more than ``MAX_CURVATURE_RANGE`` (a 2-D Gaussian's NCE on data
    of scale 1e10: a location's curvature of 1e-20 beside a Cholesky factor's off-diagonal
    one of 1e20, where damped Newton stopped 1.4 standard errors from the minimum and called
    it one), then the scale to unit curvature."""
    derivs(flat)
    found = sums.get(np.asarray(flat).tobytes())
    if found is None:
        return None
    hessian = np.asarray(found[0].hessian, dtype=float)
    diagonal = np.abs(np.diag(hessian))
    usable = np.isfinite(diagonal) & (diagonal > 0)
    if not (np.all(np.isfinite(hessian)) and np.count_nonzero(usable) > 1
            and diagonal[usable].max() > MAX_CURVATURE_RANGE * diagonal[usable].min()):
        return None
    return unit_curvature_scale(hessian, 1.0, dtype)


def _sums_at(theta, sums: dict):
    """``(theta, the full-data sums at it, their coordinate scale)`` when Newton's last
    evaluation was at ``theta``, else None."""
    found = sums.get(np.asarray(ravel_pytree(theta)[0]).tobytes())
    return None if found is None else (theta, *found)


def _covariance(model, objective, fitted, est_state, data, key, in_constrained: bool,
                label: str, refined_at=None):
    """Sandwich covariance of the flattened constrained parameters (and nuisance parameters),
    NaN in the rows and columns of parameters the data do not identify, with a warning.
    ``refined_at``: ``(theta, sums, scale)``, the unconstrained point of the last Newton step
    and the full-data sums there, in the coordinates scaled by ``scale`` (None: unscaled),
    which the sandwich then reuses."""
    scale = None
    if refined_at is not None and not in_constrained:
        template, full, scale = refined_at
    elif in_constrained:
        template, full = fitted, None
    else:
        template, full = _initial_theta(model, *((fitted, None) if objective.nuisance is None
                                                 else fitted)), None
    flat, _ = ravel_pytree(template)
    passes = functools.partial(solvers.derivatives, flat, template, data, est_state, key,
                               model=model, objective=objective, constrained=in_constrained)
    if full is None:
        # one blocked pass gives H and J = mean ∇ℓ_i ∇ℓ_iᵀ: the n per-observation gradients
        # are never held at once
        full = passes()
    hessian, score_outer, underflow = _rescaled_sums(full, passes, flat.dtype, scale)
    cov = sandwich_from_moments(hessian, score_outer, data.shape[0]).covariance
    if in_constrained:
        # the constrained coordinates can have directions the parameters cannot move in (the
        # antisymmetric part of a precision matrix): identification is judged in the free,
        # unconstrained coordinates, H_u = Dᵀ H D at a stationary point
        u = model.to_unconstrained(fitted)
        flat_u, _ = ravel_pytree(u)
        jacobian = np.asarray(solvers.constrained_jacobian(flat_u, u, model=model), dtype=float)
        free_hessian = jacobian.T @ hessian @ jacobian
    else:
        jacobian = np.asarray(solvers.constrained_jacobian(flat, template, model=model,
                                                           objective=objective), dtype=float)
        free_hessian = hessian
        cov = delta_method(jacobian, cov)
    if np.any(underflow):
        # the constrained parameters that move with the coordinates whose sums underflowed
        affected = (underflow if in_constrained
                    else np.any(jacobian[:, underflow] != 0, axis=1))
        return _mark_underflow(cov, affected, objective, fitted, label, flat.dtype)
    null = unidentified_directions(free_hessian, flat.dtype)
    if null.size:
        cov = _mark_unidentified(cov, jacobian @ null.T, model, objective, fitted, label,
                                 flat.dtype)
    return cov


#: rescaled full-data passes for the sandwich at most, each scaled by what the one before gave
MAX_RESCALED_PASSES = 2


def _rescaled_sums(full, passes, dtype, scale=None):
    """``H`` and ``J`` in float64 for the sandwich, and the mask of the coordinates whose sums
    underflow ``dtype`` still. Where some diagonal entry of ``full``'s lies below
    :func:`~unnorm.uncertainty.precision_floor` (data on a scale of 1e8 give score matching's
    location a ``J`` of 1e-48, flushed to 0 in float32), the pass is repeated in coordinates
    scaled by ``diag(H)^{-1/2}`` (``passes(scale=...)``), in which each coordinate's
    derivatives are of the objective's own size, and its sums are mapped back in float64.
    ``scale``: the coordinate scale ``full`` was computed in (None: unscaled)."""
    hessian = np.asarray(full.hessian, dtype=float)
    outer = np.asarray(full.score_outer, dtype=float)
    scale = np.ones(hessian.shape[0]) if scale is None else np.asarray(scale, dtype=float)

    def finite():
        return np.all(np.isfinite(hessian)) and np.all(np.isfinite(outer))

    for _ in range(MAX_RESCALED_PASSES):
        if not (finite() and np.any(underflowing(hessian, outer, dtype))):
            break
        scale = unit_curvature_scale(hessian, scale, dtype)
        full = passes(scale=jnp.asarray(scale, dtype=dtype))
        hessian = np.asarray(full.hessian, dtype=float)
        outer = np.asarray(full.score_outer, dtype=float)
    underflow = np.zeros(hessian.shape[0], bool)
    if finite():
        underflow = underflowing(hessian, outer, dtype)
        if np.any(scale != 1.0):
            # where other coordinates needed rescaling, a coordinate whose curvature and
            # gradients are both exactly 0 is one whose derivatives underflow even there
            # (score matching's location on data of scale 1e11: Λ² of 1e-44 is 0 in
            # float32 before any scaling enters), not one the objective ignores
            underflow |= (np.diag(hessian) == 0) & (np.diag(outer) == 0)
    back = np.outer(1.0 / scale, 1.0 / scale)
    return hessian * back, outer * back, underflow


def _mark_underflow(cov, affected, objective, fitted, label, dtype):
    """The covariance all NaN, with a warning naming the parameters ``affected`` (a mask over
    the constrained ones), whose sandwich sums underflow ``dtype`` even in rescaled
    coordinates: the refinement could not see the objective change in them either, so the
    estimate may be off in every parameter, and no finite standard error is given."""
    names = _fitted_names(objective, fitted)
    shown = _named([names[i] for i in np.flatnonzero(affected)])
    name = np.dtype(dtype).name
    warnings.warn(
        f"the standard errors of the {label} fit are NaN: the derivatives of its objective "
        f"in {shown} are too small for {name} to hold (their products fall below its "
        f"smallest normal number, {np.finfo(dtype).tiny:.3g}) even with the parameters "
        "rescaled, as happens for data on a very large or very small scale, so the estimate "
        "may be off in every parameter. Compute in float64 "
        "(jax.config.update('jax_enable_x64', True)) or standardize the data (and map the "
        "estimates back).", RuntimeWarning, stacklevel=4)
    return np.full(np.shape(cov), np.nan)


def _mark_doubtful(cov, objective, fitted, label: str, reason: str):
    """The covariance all NaN, with a warning giving the estimator's ``reason`` to doubt the
    estimate (``Objective.check_estimate``) and naming the parameters."""
    names = _fitted_names(objective, fitted)
    shown = _named(names)
    warnings.warn(f"the standard errors of the {label} fit are NaN ({shown}): {reason}",
                  RuntimeWarning, stacklevel=3)
    return np.full(np.shape(cov), np.nan)


#: the singular-Hessian warning describes at most this many directions and names at most this
#: many parameters
MAX_DESCRIBED, MAX_NAMED = 3, 12


def _fitted_names(objective, fitted) -> list[str]:
    """The names of the fitted parameters, flattened as the covariance is, the nuisance's
    prefixed ``nuisance.``."""
    params, nuisance = (fitted, None) if objective.nuisance is None else fitted
    names = parameter_names(params)
    if nuisance is not None:
        names += [f"nuisance.{name}" for name in parameter_names(nuisance)]
    return names


def _named(names: list[str]) -> str:
    """At most ``MAX_NAMED`` of ``names``, and how many more, for a warning."""
    return ", ".join(names[:MAX_NAMED]) + (
        f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


def _mark_post_fit_unidentified(model, objective, fitted, cov, hessian, label: str):
    """An estimator's own covariance (``PostFit``), NaN where the Hessian of its objective
    (unconstrained coordinates) says the data do not identify the parameters, with a warning."""
    params, nuisance = (fitted, None) if objective.nuisance is None else fitted
    theta_u = _initial_theta(model, params, nuisance)
    flat_u, _ = ravel_pytree(theta_u)
    null = unidentified_directions(hessian, flat_u.dtype)
    if not null.size:
        return cov
    jacobian = np.asarray(solvers.constrained_jacobian(flat_u, theta_u, model=model,
                                                       objective=objective), dtype=float)
    return _mark_unidentified(cov, jacobian @ null.T, model, objective, fitted, label,
                              flat_u.dtype)


def _warn_unbounded(model, objective, fitted, boundary, label: str) -> np.ndarray:
    """Warn that the likelihood is unbounded (or flat) along the coordinates the fitted model's
    draws say so of (:class:`~unnorm.estimators.boundary.Boundary`), naming the parameters and
    the direction in which the likelihood rises; returns the mask of the constrained
    parameters that move with those coordinates, which get NaN standard errors."""
    params = fitted if objective.nuisance is None else fitted[0]
    u = model.to_unconstrained(params)
    flat_u, _ = ravel_pytree(u)
    names = _fitted_names(objective, fitted)
    # the constrained parameters that move with a set of coordinates, and the constrained
    # direction in which the likelihood rises (the coordinates', through the map's slope):
    # derivatives of the constrained map along a few directions, not its p × p Jacobian,
    # which a neural energy's thousands of weights make gigabytes. Positive random weights
    # on a set's coordinates leave a parameter that moves with any of them non-zero (a
    # cancellation has probability zero)
    weights = np.random.default_rng(0).uniform(1.0, 2.0, flat_u.size)
    unbounded_only = boundary.unbounded
    flat_only = boundary.flat & ~boundary.unbounded
    along = _constrained_derivatives(model, u, flat_u, np.stack([
        np.where(unbounded_only, boundary.rising, 0.0), np.where(unbounded_only, weights, 0.0),
        np.where(flat_only, weights, 0.0)], axis=1))
    moves = {"unbounded": along[:, 1] != 0, "flat": along[:, 2] != 0}

    def named(which):
        return [names[i] for i in np.flatnonzero(moves[which])]

    direction = np.sign(along[:, 0])
    down = [names[i] for i in np.flatnonzero(direction < 0)]
    up = [names[i] for i in np.flatnonzero(direction > 0)]
    parts = []
    if down:
        parts.append(f"as {_named(down)} decrease{'s' if len(down) == 1 else ''}")
    if up:
        parts.append(f"as {_named(up)} increase{'s' if len(up) == 1 else ''}")
    unbounded, flat = named("unbounded"), named("flat")
    message = f"the likelihood of the {label} fit"
    if unbounded:
        message += (
            f" increases without bound {' and '.join(parts)}: every observation gives the "
            "energy's derivative in these parameters the same value, an extreme of the values "
            "the fitted model's draws give it (as for a binary unit never on, or always on, in "
            "the data), so their maximum-likelihood values are infinite and the fitted ones "
            "only say how far the optimizer went")
    if flat:
        message += (
            f"{';' if unbounded else ''} is flat in {_named(flat)}: the data and every draw "
            "of the fitted model give the energy's derivative in these parameters one value, "
            "so the data say nothing of them there (the energy does not depend on them, or "
            "the fit has gone far towards an unbounded likelihood)")
    warnings.warn(
        f"{message}. Their standard errors are NaN and fit.converged does not judge them. "
        "Remove such units from the data and the model, or fix these parameters.",
        RuntimeWarning, stacklevel=3)
    return moves["unbounded"] | moves["flat"]


def _constrained_derivatives(model, u, flat_u, tangents: np.ndarray) -> np.ndarray:
    """``J t`` for each column ``t`` of ``tangents`` (p × k), ``J`` the Jacobian of the
    flattened constrained parameters in the flattened unconstrained ones at ``flat_u``, by
    forward mode: (p × k) without forming ``J``."""
    columns = jnp.asarray(tangents, dtype=flat_u.dtype)
    return np.asarray(_constrained_jvps(flat_u, u, columns, model=model), dtype=float)


@functools.partial(jax.jit, static_argnames=("model",))
def _constrained_jvps(flat_u, template_u, columns, *, model):
    _, unravel = ravel_pytree(template_u)

    def constrained(flat):
        return ravel_pytree(model.to_constrained(unravel(flat)))[0]

    def along(tangent):
        return jax.jvp(constrained, (flat_u,), (tangent,))[1]

    return jax.vmap(along, in_axes=1, out_axes=1)(columns)


def _travelled(model, objective, boundary, snapshots, steps: int):
    """``boundary`` with the flat coordinates that moved over the second half of the run
    counted as unbounded, rising in the direction they moved. Far along an unbounded
    likelihood the fitted model's draws may no longer reach the value that the data's are at
    the edge of (a unit never on in the data, whose probability has fallen below one in the
    draws), but the optimizer still moves the coordinate; one the energy does not depend on
    has a gradient of exactly 0, and Adam never moves it."""
    halves = _second_half(model, objective, snapshots, steps, unconstrained=True)
    if halves is None or not np.any(boundary.flat):
        return boundary
    iterates = np.concatenate(halves[:2])
    moved = boundary.flat & (np.ptp(iterates, axis=0) > 0)
    direction = np.sign(halves[1].mean(axis=0) - halves[0].mean(axis=0)).astype(int)
    return boundary._replace(unbounded=boundary.unbounded | moved,
                             flat=boundary.flat & ~moved,
                             rising=np.where(moved, direction, boundary.rising))


def _without(hessian: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """``hessian`` with the ``excluded`` coordinates decoupled and given the largest curvature
    on its diagonal, so that a search for the directions the data do not identify does not
    report again the coordinates already reported as unbounded or flat."""
    hessian = np.array(hessian, dtype=float)
    hessian[excluded, :] = 0.0
    hessian[:, excluded] = 0.0
    diagonal = np.abs(np.diag(hessian))
    hessian[excluded, excluded] = max(float(np.max(diagonal, initial=0.0)), 1.0)
    return hessian


def _mark_unidentified(cov, directions, model, objective, fitted, label, dtype):
    """NaN the covariance of the parameters that move along ``directions`` (columns, in the
    constrained coordinates), and say which they are and what it means."""
    names = _fitted_names(objective, fitted)
    loadings = np.abs(directions)
    affected = np.flatnonzero(loadings.max(axis=1) > 1e-3 * loadings.max())
    # a model with many unidentified directions (an RBM's pixels that are never on) would
    # otherwise fill the screen: a few directions and names, and how many more
    described = "; ".join(describe_direction(d, names) for d in directions.T[:MAX_DESCRIBED])
    if directions.shape[1] > MAX_DESCRIBED:
        described += f"; and {directions.shape[1] - MAX_DESCRIBED} more directions"
    affected_names = _named([names[i] for i in affected])
    warnings.warn(
        f"the Hessian of the {label} objective at the estimate is singular (to "
        f"{np.dtype(dtype).name} precision): the parameters are not identified from these "
        f"data along {described} (the objective does not change along it, or too little to "
        f"tell in {np.dtype(dtype).name}). Their standard errors are NaN: "
        f"{affected_names}. Fix or remove one of the parameters "
        "involved, or reparameterize so that each enters the energy in its own way.",
        RuntimeWarning, stacklevel=4)
    cov = np.array(cov, dtype=float)
    cov[affected, :] = np.nan
    cov[:, affected] = np.nan
    return cov


def _interval_grid(model: Model, objective: Objective, fitted, covariance: np.ndarray):
    """The endpoints of the intervals that respect the constraints (:mod:`unnorm.intervals`)
    from the covariance of the flattened constrained parameters (nuisance ones last); None
    where the covariance is not finite."""
    if not np.all(np.isfinite(covariance)):
        return None
    params, nuisance = (fitted, None) if objective.nuisance is None else fitted
    theta_u = _initial_theta(model, params, nuisance)
    flat_u, _ = ravel_pytree(theta_u)
    jacobian = solvers.constrained_jacobian(flat_u, theta_u, model=model, objective=objective)
    cov_u = intervals.unconstrained_covariance(np.asarray(jacobian), covariance)
    # a constraint of event_dim 0 (real, positive, an interval) maps each entry on its own
    elementwise = [np.full(int(np.size(leaf)), model.constraints[path[0].key].event_dim == 0)
                   for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
    if nuisance is not None:
        elementwise.append(np.ones(_flat_size(nuisance), bool))
    return intervals.endpoint_grid(_params_map(model, objective),
                                   theta_u, cov_u, np.concatenate(elementwise))


def _flat_size(tree) -> int:
    """The length of ``ravel_pytree(tree)[0]``, without concatenating the leaves on the
    device."""
    return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


def _unravel_numpy(params: dict, flat: np.ndarray) -> dict:
    """``flat`` (``ravel_pytree`` order) as NumPy arrays shaped and typed like ``params``'
    leaves, on the host: the result's standard errors need no trip through the device."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    ends = np.cumsum([int(np.size(leaf)) for leaf in leaves], dtype=int)
    pieces = np.split(np.asarray(flat), ends[:-1]) if leaves else []
    return jax.tree_util.tree_unflatten(treedef, [
        piece.astype(jnp.result_type(leaf)).reshape(np.shape(leaf))
        for piece, leaf in zip(pieces, leaves, strict=True)])
