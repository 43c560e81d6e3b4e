"""The estimator contract: what :func:`unnorm.fit` needs from an estimator.

An estimator is a frozen dataclass of options (``SM()``, ``DSM(sigma=0.1)``...). Bound to a model
with :meth:`Estimator.build`, it yields an :class:`Objective`, a pair of pure functions in the
optax shape (an optimizer is a pair ``init``/``update``)::

    init(params, key, data) -> state
    loss(params, state, batch, key) -> (scalar, (state, info))

so ``jax.value_and_grad(loss, has_aux=True)`` plus any optax optimizer trains it. ``terms`` gives
the per-observation loss terms ``ℓ_i`` whose mean is the loss; the sandwich standard errors of
:mod:`unnorm.uncertainty` are built from them.

Three optional extension points serve estimators that do not fit that mould:

* ``nuisance`` — parameters of the estimator's own, optimized jointly with θ (NCE's log Z, seed
  004 §5: "Z_θ is treated as a learnable (scalar) parameter"); ``loss`` and ``terms`` then take
  the pair ``(params, nuisance)`` in place of ``params``. It is a function of the data, which
  also sets data-dependent state (NCE's default noise is fitted to the data);
* ``start`` — a starting point of the estimator's own choosing, where its objective is better
  conditioned than at the model's initial values (NCE starts from the member of the model
  nearest its noise distribution);
* ``post_fit`` — what happens after the optimizer: the chain-based estimators sample the fitted
  model, polish the estimate and build their own covariance from model expectations (the
  likelihood's curvature ``Cov_θ(∇_θE)`` is not a mean over observations).
* ``init_minibatch`` — the state for fits that take minibatches, where ``init`` precomputes
  what only full-batch steps read (KSD's ``n × n`` kernel matrix, up to 256 MB).
* ``place_state`` — where the state's per-chain arrays go in a fit over several devices: the
  chain-based estimators split their persistent chains over the devices.
* ``check_estimate`` — the estimator's own test of the estimate, for a failure its derivatives
  cannot show (NCE: a model far wider than its noise, which is fitted to the data); the
  driver then gives no standard errors.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax

from .. import threefry
from ..model import Model

__all__ = ["Batch", "Objective", "Estimator", "PostFit", "Traits"]


class Batch(NamedTuple):
    """A minibatch: observations ``x`` of shape ``(b, *event_shape)`` and their row ``index``
    in the data set (estimators key per-observation noise on it)."""

    x: jax.Array
    index: jax.Array


class Traits(NamedTuple):
    """What an estimator's objective is, declared once; the fit driver plans its stages from it.

    Attributes
    ----------
    deterministic : bool
        The loss does not depend on the step key (any noise is keyed on the state and the
        observation index), so the objective is an ordinary M-estimation criterion: Newton can
        refine the optimizer's answer and the sandwich describes its minimizer.
    convex_if_linear_energy : bool
        The full-data objective is convex in θ whenever ``E(x; θ)`` is affine in θ (an
        exponential family): Newton from the initial values then finds the minimum. Ratio
        matching, whose loss is not convex in θ, says False.
    quadratic_if_linear_score : bool
        The loss depends on θ only through the score ``-∇ₓE`` and is quadratic in it; a score
        linear in θ then gives a closed-form minimizer.
    monte_carlo_gradient : bool
        The gradient is a Monte Carlo estimate (MCMC draws inside the loss): the driver returns
        the average of the iterates over the second half of the steps (Polyak & Juditsky 1992)
        instead of the last one, whose Monte Carlo jitter does not vanish at a constant
        learning rate.
    cheap_newton : bool
        The value, gradient and Hessian of the full-data objective cost about as much as a few
        optimizer steps, so Newton goes first for any energy (standard errors wanted, the
        default optimizer, full batch) instead of after the hundreds of steps the optimizer
        takes to converge. KSD says True: its steps and its derivatives both read the data's
        ``n × n`` kernel matrix. On an objective that is not convex, Newton from the initial
        values finds the minimum it is drawn to, which need not be the optimizer's.
    sharded_post_fit : bool
        ``post_fit`` sums over the data where they are: in a fit whose rows are split over
        several devices it receives the rows as split (an :class:`unnorm.sharding.RowShards`),
        and ``init_minibatch`` gives the state, rather than ``init``'s precomputation on one
        device. KSD says True: its pairs of rows are summed per device. Otherwise ``post_fit``
        receives the whole data on one device.
    """

    deterministic: bool = True
    convex_if_linear_energy: bool = False
    quadratic_if_linear_score: bool = False
    monte_carlo_gradient: bool = False
    cheap_newton: bool = False
    sharded_post_fit: bool = False


class Objective(NamedTuple):
    """An estimator bound to a model.

    Attributes
    ----------
    init : callable
        ``init(params, key, data) -> state``, the estimator's state (a pytree), set from the
        initial params and the full data (KSD's bandwidth is the data's median heuristic).
    loss : callable
        ``loss(params, state, batch, key) -> (scalar, (state, info))``; ``params`` are in the
        constrained space, ``key`` changes at every optimizer step.
    terms : callable
        ``terms(params, state, batch, key) -> array (b,)``, the per-observation terms whose mean
        is the loss; with a fixed ``state`` they are a deterministic function of the data when
        ``traits.deterministic`` is true.
    traits : Traits
        What the objective is (deterministic, convex or quadratic in θ for which energies,
        Monte Carlo gradient): the driver's plan of stages is read from it.
    nuisance : callable, optional
        ``nuisance(params, state, data) -> (state, values)``: the initial values of the
        estimator's own real parameters (a dict), optimized with θ (``loss`` and ``terms`` then
        take ``(params, nuisance)``), and the state updated from the full data; the values are
        reported as ``FitResult.nuisance``.
    post_fit : callable, optional
        ``post_fit(params, state, data, key, compute_se, progress_bar, devices) -> PostFit``,
        run after the optimizer in place of the driver's Newton refinement and sandwich
        covariance; ``devices`` are the fit's devices when it runs on several (a tuple of
        ``jax.Device``, for its own samplings of the model), else None.
    start : callable, optional
        ``start(params, state, data) -> params``: the (constrained) point to start from in
        place of the model's initial values ``params``, or ``params`` themselves; called after
        ``nuisance``, whose values the driver then recomputes at the new point.
    init_minibatch : callable, optional
        ``init_minibatch(params, key, data) -> state``, ``init`` for fits that take
        minibatches, where ``init`` would precompute what only full-batch steps read (KSD's
        kernel matrix); default ``init``.
    check_estimate : callable, optional
        ``check_estimate(theta, state, data) -> str | None``: at the estimate ``theta`` (what
        ``loss`` takes), why the estimate cannot be trusted, or None. A message makes every
        standard error NaN, with a warning that gives it.
    place_state : callable, optional
        ``place_state(state, split) -> state``: in a fit over several devices, the state with
        its per-chain arrays passed through ``split`` (which places a PyTree with a leading
        chain axis over the devices along it, or leaves it to be replicated when the chains
        are too few to gain from the split); the rest stays replicated. None: all
        replicated.
    """

    init: Callable
    loss: Callable
    terms: Callable
    traits: Traits
    nuisance: Callable | None = None
    post_fit: Callable | None = None
    start: Callable | None = None
    init_minibatch: Callable | None = None
    check_estimate: Callable | None = None
    place_state: Callable | None = None


class PostFit(NamedTuple):
    """What an estimator's ``post_fit`` returns: the final (constrained) ``params``, their
    ``covariance`` (flattened in ``ravel_pytree`` order; None without standard errors) and the
    MCMC ``chains`` it ran, as InferenceData (or None). ``refined_by`` names the solve stage it
    ran after the driver's (``"newton"``, ``"Monte Carlo MLE"``; None for none) and
    ``covariance_from`` how it computed the covariance (``FitResult.stages`` lists both).
    ``converged``: whether that stage reached its answer (None: the driver judges, as for the
    other estimators). ``hessian``: the Hessian of the objective the covariance came from, in
    the unconstrained flattened coordinates, from which the driver finds the directions the
    data do not identify (None: not checked). ``boundary``: the coordinates along which the
    likelihood is unbounded and each one's Fisher information
    (:class:`~unnorm.estimators.boundary.Boundary`; None: not computed)."""

    params: Any
    covariance: Any
    chains: Any
    refined_by: str | None = None
    covariance_from: str | None = None
    converged: bool | None = None
    hessian: Any = None
    boundary: Any = None


def objective_params(model: Model, objective: Objective, theta):
    """What ``objective.loss`` takes, from the optimized unconstrained values ``theta``: the
    constrained params, paired with the nuisance parameters when the objective has some."""
    if objective.nuisance is None:
        return model.to_constrained(theta)
    unconstrained, nuisance = theta
    return model.to_constrained(unconstrained), nuisance


class Estimator(abc.ABC):
    """Base class of the estimators: frozen dataclasses whose fields are the options;
    :meth:`build` binds them to a model."""

    #: the short name used by ``un.fit(..., estimator=name)`` and in tables
    name: ClassVar[str]

    @abc.abstractmethod
    def check(self, model: Model) -> None:
        """Raise ``ValueError`` when this estimator cannot fit ``model`` (e.g. its support)."""

    @abc.abstractmethod
    def build(self, model: Model, resample: bool) -> Objective:
        """Bind to ``model``; ``resample`` draws fresh noise at every step instead of keying
        it on the observation index."""

    def options(self) -> dict[str, Any]:
        """The estimator's options, for summaries."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def observation_keys(noise_key, batch: Batch, key, resample: bool) -> jax.Array:
    """One key per observation: keyed on its row index (common noise across steps, so the
    objective is a fixed M-estimation criterion) or on the step key (fresh noise)."""
    base = key if resample else noise_key
    return jax.vmap(lambda i: threefry.fold_in(base, i))(batch.index)
