"""What :func:`unnorm.fit` returns: estimates, standard errors and the record of the run."""

from __future__ import annotations

import dataclasses
import functools
from statistics import NormalDist
from typing import Any

import jax
import numpy as np
import pandas as pd

from . import _checks
from .intervals import interval_from_grid
from .uncertainty import parameter_names

__all__ = ["FitResult", "load_fit", "INTERVAL_KINDS"]

#: ``conf_int``'s kinds of interval
INTERVAL_KINDS = ("transformed", "wald")


@dataclasses.dataclass(frozen=True, repr=False)
class FitResult:
    """The result of :func:`unnorm.fit`: plain arrays, no closures.

    Attributes
    ----------
    params : dict
        Estimates in the constrained space, with the structure of ``model.params``.
    stderr : dict or None
        Asymptotic standard errors with the same structure (sandwich covariance, see
        :mod:`unnorm.uncertainty`); ``None`` when they were not computed (``stderr=False``, or a
        model with more parameters than ``stderr="auto"`` handles).
    covariance : numpy.ndarray or None
        Covariance of the flattened constrained parameters, in the order of :attr:`names`.
    names : list of str
        One label per scalar parameter: ``mu[0]``, ``prec[0,1]`` (built on first use: a neural
        energy has tens of thousands).
    loss : numpy.ndarray
        The objective at every optimizer step (empty for a closed-form fit); a step whose loss
        or gradient was not finite was skipped and holds NaN here (counted in ``skipped_steps``).
    converged : bool
        Whether the fit reached its answer: for deterministic objectives, the optimizer's
        stopping rule and the Newton refinement (always true for a closed-form solution); for
        Monte Carlo MLE, its Newton steps on the importance-sampling likelihood with
        non-degenerate weights; for CD and PCD, whose stochastic loss never settles, the
        iterates' mean over the third quarter of the run and over the fourth within one
        standard error of each other in every parameter.
    num_steps : int
        Optimizer steps taken (0 for a closed-form solution).
    wall_time : float
        Seconds, compilation included.
    estimator : str
        The estimator's name; ``options`` holds its settings.
    method : str
        The stages that found θ̂, joined: ``"closed form"`` (one linear solve), ``"newton"``,
        ``"optimizer"``, ``"optimizer + newton"`` (the optimizer's answer refined by Newton
        steps on the full-data objective), ``"optimizer + newton + trust region"`` (the
        refinement continued by trust-region Newton steps, far from a minimum: data far from
        the origin or on a large scale) or ``"optimizer + Monte Carlo MLE"``.
    stages : tuple of str
        Every stage that ran, in order: the solve stages of ``method``, then how the covariance
        was computed (``"sandwich"``, ``"U-statistic sandwich"``, ``"likelihood sandwich from
        model draws"``); planned by :func:`unnorm.fit` from the estimator's traits.
    chains : InferenceData or None
        The MCMC chains of a chain-based estimator (MLE, CD, PCD): draws from the fitted model,
        which its standard errors are computed from; ``None`` for the estimators that draw no
        samples (score matching, pseudo-likelihood, NCE, KSD).
    nuisance, nuisance_stderr : dict or None
        The estimator's own parameters and their standard errors, e.g. NCE's
        ``{"log_z": ...}``, the log normalizing constant it learns with θ; ``None`` otherwise.
        They get their own rows in :meth:`summary`.
    interval_grid : numpy.ndarray or None
        Per scalar parameter (nuisance ones last), the interval endpoints at the normal scores
        of :data:`unnorm.intervals.Z_GRID`, computed in the unconstrained space and mapped back
        (:mod:`unnorm.intervals`): what :meth:`conf_int` and :meth:`summary` interpolate.
    """

    params: dict[str, Any]
    stderr: dict[str, Any] | None
    covariance: np.ndarray | None
    loss: np.ndarray
    converged: bool
    num_steps: int
    wall_time: float
    estimator: str
    method: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    skipped_steps: int = 0
    num_observations: int = 0
    chains: Any = None
    nuisance: dict[str, Any] | None = None
    nuisance_stderr: dict[str, Any] | None = None
    stages: tuple[str, ...] = ()
    interval_grid: np.ndarray | None = None

    @functools.cached_property
    def names(self) -> list[str]:
        return parameter_names(self.params)

    # ---- intervals and tables --------------------------------------------------------------------
    def _flat(self, tree) -> np.ndarray:
        leaves = [np.ravel(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
        return np.concatenate(leaves) if leaves else np.zeros(0)

    def _all_names(self) -> list[str]:
        return self.names + (parameter_names(self.nuisance) if self.nuisance else [])

    def _all(self, model_tree, nuisance_tree) -> np.ndarray:
        flat = self._flat(model_tree)
        if self.nuisance:
            flat = np.concatenate([flat, self._flat(nuisance_tree)])
        return flat

    def _flat_intervals(self, level: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper endpoints of every scalar parameter (nuisance ones last)."""
        level = _checks.check_probability(level, "level")
        kind = _checks.check_choice(kind, "kind", INTERVAL_KINDS)
        estimate = self._all(self.params, self.nuisance)
        if self.stderr is None:
            nan = np.full_like(estimate, np.nan, dtype=float)
            return nan, nan
        if kind == "transformed" and self.interval_grid is not None:
            return interval_from_grid(self.interval_grid, level)
        z = NormalDist().inv_cdf(0.5 + level / 2)
        se = self._all(self.stderr, self.nuisance_stderr)
        return estimate - z * se, estimate + z * se

    def conf_int(self, level: float = 0.95, kind: str = "transformed"
                 ) -> dict[str, tuple[Any, Any]]:
        """Confidence intervals per parameter, at coverage ``level``.

        ``kind="transformed"`` (default): the asymptotic normal interval of the unconstrained
        parameter mapped back through the constraint's bijection (:mod:`unnorm.intervals`), so
        it never leaves the parameter space (a positive parameter's lower end stays above 0,
        a positive-definite matrix's diagonal too); it equals the Wald interval for
        unconstrained parameters. ``kind="wald"``: the symmetric delta-method interval
        ``estimate ± z_{(1+level)/2} · std_err``.

        Returns a dict name -> ``(lower, upper)`` with arrays shaped like the parameter (the
        estimator's nuisance parameters, such as NCE's ``log_z``, included).

        Raises
        ------
        ValueError
            When standard errors were not computed.

        Examples
        --------
        >>> import jax, numpy as np, unnorm as un
        >>> x = np.random.default_rng(0).normal(0.0, 0.3, size=(500, 2))
        >>> fit = un.fit(un.models.gaussian(2), x, "sm", key=jax.random.key(0),
        ...              progress_bar=False)
        >>> lower, upper = fit.conf_int(0.99)["prec"]
        >>> bool(lower[0, 0] > 0)
        True
        """
        if self.stderr is None:
            raise ValueError(
                "this fit has no standard errors (fit with stderr=True to compute them), so it "
                "has no confidence intervals."
            )
        lower, upper = self._flat_intervals(level, kind)
        out, start = {}, 0
        for tree in (self.params, self.nuisance or {}):
            size = self._flat(tree).size
            lower_tree = _unflatten(tree, lower[start:start + size])
            upper_tree = _unflatten(tree, upper[start:start + size])
            out.update({name: (lower_tree[name], upper_tree[name]) for name in tree})
            start += size
        return out

    def summary(self, level: float = 0.95, kind: str = "transformed") -> pd.DataFrame:
        """One row per scalar parameter (then the estimator's nuisance parameters, e.g. NCE's
        ``log_z``), columns ``estimate std_err ci_lower ci_upper``; the interval is
        :meth:`conf_int`'s of that ``kind``."""
        estimate = self._all(self.params, self.nuisance)
        if self.stderr is None:
            se = np.full_like(estimate, np.nan, dtype=float)
        else:
            se = self._all(self.stderr, self.nuisance_stderr)
        lower, upper = self._flat_intervals(level, kind)
        return pd.DataFrame(
            {"estimate": estimate, "std_err": se, "ci_lower": lower, "ci_upper": upper},
            index=pd.Index(self._all_names(), name="parameter"),
        )

    def to_dataframe(self, level: float = 0.95, kind: str = "transformed") -> pd.DataFrame:
        """The summary in long form, one row per scalar parameter, with the run's record:
        ``estimator, parameter, estimate, std_err, ci_lower, ci_upper, time_s`` (the columns of
        :func:`unnorm.compare`), then ``method``, ``converged``, ``num_observations``."""
        table = self.summary(level, kind).reset_index()
        table.insert(0, "estimator", self.estimator)
        table["time_s"] = self.wall_time
        table["method"] = self.method
        table["converged"] = self.converged
        table["num_observations"] = self.num_observations
        return table

    def to_inference_data(self):
        """The estimator's MCMC chains (draws of the fitted model: MLE, CD, PCD) as ArviZ
        InferenceData, with the fit's estimates in its attributes; a ``ValueError`` for
        estimators that draw no samples."""
        if self.chains is None:
            raise ValueError(
                f"estimator {self.estimator!r} ran no MCMC chains, so the fit has no "
                "InferenceData; the chain-based estimators 'mle', 'cd' and 'pcd' do.")
        return self.chains

    # ---- saving ----------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the fit to ``path`` (JSON: the record and every estimate, standard error and
        interval as nested lists) and, for chain-based fits, its chains to NetCDF beside it
        (``<path stem>.chains.nc``). No code is pickled; :func:`load_fit` reads it back.

        Examples
        --------
        >>> import jax, numpy as np, tempfile, pathlib, unnorm as un
        >>> x = np.random.default_rng(0).normal(size=(500, 2))
        >>> fit = un.fit(un.models.gaussian(2), x, "sm", key=jax.random.key(0),
        ...              progress_bar=False)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "fit.json"
        >>> fit.save(path)
        >>> un.load_fit(path).summary().equals(fit.summary())
        True
        """
        return save_fit(self, path)

    def __repr__(self) -> str:
        state = "converged" if self.converged else "NOT converged"
        head = (f"FitResult(estimator={self.estimator!r}, method={self.method!r}, {state}, "
                f"n={self.num_observations}, steps={self.num_steps}, "
                f"wall_time={self.wall_time:.2f}s)")
        lines = [head]
        if self.stderr is None:
            lines.append("standard errors not computed (fit with stderr=True)")
        with pd.option_context("display.max_rows", 40, "display.width", 100):
            lines.append(str(self.summary()))
        return "\n".join(lines)

    __str__ = __repr__



def _unflatten(tree, flat: np.ndarray):
    """``flat`` (in ``tree``'s flattening order) shaped as ``tree``."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    pieces, start = [], 0
    for leaf in leaves:
        size = int(np.size(leaf))
        pieces.append(np.asarray(flat[start:start + size]).reshape(np.shape(leaf)))
        start += size
    return jax.tree_util.tree_unflatten(treedef, pieces)


# ---- saving and loading -----------------------------------------------------------------------

#: the ``format`` field of a saved fit, and its version
SAVE_FORMAT, SAVE_VERSION = "unnorm.FitResult", 1


def _encode_tree(tree, prefix: str, arrays: dict):
    """The pytree's structure as JSON (dicts and lists), each leaf replaced by the key of its
    array in ``arrays``."""
    if isinstance(tree, dict):
        return {str(k): _encode_tree(v, f"{prefix}/{k}", arrays) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_encode_tree(v, f"{prefix}/{i}", arrays) for i, v in enumerate(tree)]
    arrays[prefix] = np.asarray(tree)
    return {"array": prefix}


def _decode_tree(spec, arrays):
    if isinstance(spec, dict) and set(spec) == {"array"}:
        return np.asarray(arrays[spec["array"]])
    if isinstance(spec, dict):
        return {k: _decode_tree(v, arrays) for k, v in spec.items()}
    return [_decode_tree(v, arrays) for v in spec]


def _json_value(value):
    """An estimator option as JSON: numbers, strings, booleans and lists of them as they are,
    anything else (a noise distribution, an optimizer) by its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return repr(value)


def save_fit(result: FitResult, path) -> None:
    """Write ``result`` as ``path`` (JSON) and ``<stem>.npz`` (its arrays); see
    :meth:`FitResult.save`."""
    import json
    import pathlib

    path = pathlib.Path(path)
    arrays: dict[str, np.ndarray] = {}
    record = {
        "format": SAVE_FORMAT,
        "version": SAVE_VERSION,
        "estimator": result.estimator,
        "method": result.method,
        "stages": list(result.stages),
        "converged": bool(result.converged),
        "num_steps": int(result.num_steps),
        "wall_time": float(result.wall_time),
        "skipped_steps": int(result.skipped_steps),
        "num_observations": int(result.num_observations),
        "options": {k: _json_value(v) for k, v in result.options.items()},
        "params": _encode_tree(result.params, "params", arrays),
        "stderr": None if result.stderr is None else _encode_tree(result.stderr, "stderr",
                                                                  arrays),
        "nuisance": None if result.nuisance is None else _encode_tree(result.nuisance,
                                                                      "nuisance", arrays),
        "nuisance_stderr": (None if result.nuisance_stderr is None
                            else _encode_tree(result.nuisance_stderr, "nuisance_stderr",
                                              arrays)),
    }
    for name in ("covariance", "loss", "interval_grid"):
        value = getattr(result, name)
        record[name] = None if value is None else _encode_tree(value, name, arrays)
    arrays_path = path.with_suffix(".npz")
    record["arrays"] = arrays_path.name
    record["chains"] = None
    if result.chains is not None:
        from ._compat import to_netcdf

        chains_path = path.with_suffix(".chains.nc")
        to_netcdf(result.chains, chains_path)
        record["chains"] = chains_path.name
    np.savez(arrays_path, **arrays)
    path.write_text(json.dumps(record, indent=1))


def load_fit(path) -> FitResult:
    """Read a fit written by :meth:`FitResult.save` (the JSON file, the ``.npz`` of arrays
    beside it and, for chain-based fits, the chains' NetCDF).

    Raises ``ValueError`` when the file is not a saved fit or a file beside it is missing.

    Examples
    --------
    >>> import jax, numpy as np, tempfile, pathlib, unnorm as un
    >>> fit = un.fit(un.models.gaussian(2), np.random.default_rng(0).normal(size=(500, 2)),
    ...              "sm", key=jax.random.key(0), progress_bar=False)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "fit.json"
    >>> fit.save(path)
    >>> float(un.load_fit(path).params["mu"][0]) == float(fit.params["mu"][0])
    True
    """
    import json
    import pathlib

    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} is not a file; give the .json file that "
                         "FitResult.save wrote.")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a saved fit (not JSON: {err}).") from None
    if not isinstance(record, dict) or record.get("format") != SAVE_FORMAT:
        raise ValueError(f"{str(path)!r} is not a saved fit: its 'format' field is not "
                         f"{SAVE_FORMAT!r}.")
    if record.get("version") != SAVE_VERSION:
        raise ValueError(f"{str(path)!r} was saved in version {record.get('version')!r} of the "
                         f"format; this unnorm reads version {SAVE_VERSION}.")
    arrays_path = path.parent / record["arrays"]
    if not arrays_path.is_file():
        raise ValueError(f"the arrays of {str(path)!r} are missing: expected "
                         f"{str(arrays_path)!r} beside it.")
    with np.load(arrays_path, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}

    def tree(name):
        return None if record[name] is None else _decode_tree(record[name], arrays)

    chains = None
    if record["chains"] is not None:
        from ._compat import from_netcdf

        chains = from_netcdf(path.parent / record["chains"])
    return FitResult(
        params=tree("params"), stderr=tree("stderr"), covariance=tree("covariance"),
        loss=tree("loss"), converged=record["converged"], num_steps=record["num_steps"],
        wall_time=record["wall_time"], estimator=record["estimator"], method=record["method"],
        options=record["options"], skipped_steps=record["skipped_steps"],
        num_observations=record["num_observations"], chains=chains,
        nuisance=tree("nuisance"), nuisance_stderr=tree("nuisance_stderr"),
        stages=tuple(record["stages"]), interval_grid=tree("interval_grid"))
