"""The one place that knows which ArviZ line is installed.

ArviZ 0.2x builds ``az.InferenceData`` with ``az.from_dict(posterior=..., sample_stats=...)``;
ArviZ 1.x builds an ``xarray.DataTree`` with ``az.from_dict({"posterior": ..., ...})``. Everything
else in unnorm calls the functions here and never branches on the version itself.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ARVIZ_MAJOR",
    "from_netcdf",
    "is_inference_data",
    "to_inference_data",
    "to_netcdf",
    "rhat_and_ess",
    "pareto_khat",
]

# ArviZ (with xarray, pandas and matplotlib) is imported where it is first used, not with
# unnorm: a fit that samples nothing never needs it, and its import is a second or more of a
# fresh process's start (benchmarks/README.md). The installed line is read from the package's
# metadata, which imports nothing.
ARVIZ_MAJOR = int(importlib.metadata.version("arviz").split(".")[0])


@functools.cache
def _inference_data_type() -> type:
    """``az.InferenceData`` on ArviZ 0.2x, ``xarray.DataTree`` on ArviZ 1.x."""
    if ARVIZ_MAJOR >= 1:
        import xarray as xr

        return xr.DataTree
    import arviz as az

    return az.InferenceData


def _psislw(log_weights: np.ndarray):
    if ARVIZ_MAJOR >= 1:
        from arviz_stats.base import array_stats

        return array_stats.psislw(log_weights)
    import arviz as az

    return az.psislw(log_weights)


def _group_attrs(attrs: Mapping[str, Any] | None) -> dict:
    if ARVIZ_MAJOR >= 1:
        from arviz_base import make_attrs

        return make_attrs(dict(attrs or {}), sample_dims=("chain", "draw"))
    from arviz.data.base import make_attrs

    return make_attrs(dict(attrs or {}))


def _assemble(groups: dict):
    # ArviZ itself, on both lines: what a user's ``import arviz`` would have set up (its
    # xarray accessors and options) is in place for the data it gets
    import arviz as az

    if ARVIZ_MAJOR >= 1:
        import xarray as xr

        return xr.DataTree.from_dict(groups)
    return az.InferenceData(**groups)


def to_inference_data(
    posterior: Mapping[str, np.ndarray],
    sample_stats: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Sequence] | None = None,
):
    """Build ArviZ's InferenceData from dicts of ``(chain, draw, ...)`` arrays.

    Returns ``az.InferenceData`` on ArviZ 0.2x and ``xarray.DataTree`` on ArviZ 1.x, with what
    ``az.from_dict`` would give: dims ``chain``, ``draw`` and ArviZ's default names for the
    event dims (``x_dim_0``, ...), integer coordinates from 0, ArviZ's group attributes plus
    ``attrs``; ``dims`` names a posterior variable's event dims and ``coords`` labels them, as
    in ``az.from_dict``. The datasets are built directly: ``az.from_dict`` aligned and merged one
    DataArray per variable, 2-4 ms a call, a tenth of a 256-chain Gibbs run
    (benchmarks/README.md). ``tests/test_arviz.py`` checks the two agree.
    """
    groups = {"posterior": _dataset(posterior, attrs, dims, coords)}
    if sample_stats:
        groups["sample_stats"] = _dataset(sample_stats, attrs)
    return _assemble(groups)


def _dataset(variables: Mapping[str, np.ndarray], attrs: Mapping[str, Any] | None,
             dims: Mapping[str, Sequence[str]] | None = None,
             coords: Mapping[str, Sequence] | None = None):
    import xarray as xr

    arrays = {name: np.asarray(value) for name, value in variables.items()}
    dims, coords = dims or {}, coords or {}
    first = next(iter(arrays.values()))
    axis_coords = {"chain": np.arange(first.shape[0]), "draw": np.arange(first.shape[1])}
    data_vars = {}
    for name, array in arrays.items():
        if array.shape[:2] != first.shape[:2]:
            raise ValueError(f"{name} has shape {array.shape}; every variable of a group needs "
                             f"the (chain, draw) shape {first.shape[:2]} first.")
        event_dims = list(dims.get(name, [f"{name}_dim_{i}" for i in range(array.ndim - 2)]))
        axis_coords.update({dim: np.asarray(coords[dim]) if dim in coords else np.arange(size)
                            for dim, size in zip(event_dims, array.shape[2:], strict=True)})
        data_vars[name] = (("chain", "draw", *event_dims), array)
    return xr.Dataset(data_vars, coords=axis_coords, attrs=_group_attrs(attrs))


def is_inference_data(obj: Any) -> bool:
    """True for what :func:`to_inference_data` returns under the installed ArviZ."""
    return isinstance(obj, _inference_data_type())


def rhat_and_ess(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalized split R-hat and bulk ESS of every coordinate of ``(chain, draw, ...)``
    draws, flattened over the event dims. Coordinates constant across all draws give NaN."""
    import warnings

    import arviz as az
    import xarray as xr

    arr = np.asarray(draws, dtype=float)
    flat = arr.reshape(arr.shape[0], arr.shape[1], -1)
    dataset = xr.Dataset({"x": (("chain", "draw", "coordinate"), flat)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = np.asarray(az.rhat(dataset)["x"], dtype=float)
        ess = np.asarray(az.ess(dataset)["x"], dtype=float)
    return rhat, ess


def to_netcdf(idata, path) -> None:
    """Write InferenceData / DataTree to a NetCDF file."""
    idata.to_netcdf(str(path))


def from_netcdf(path):
    """Read what :func:`to_netcdf` wrote, as the installed ArviZ's InferenceData."""
    import arviz as az

    return az.from_netcdf(str(path))


#: PSIS fits the Pareto tail to the largest min(S/5, 3√S) of S weights, and ArviZ 1.x refuses
#: a tail of fewer than 5: below 25 weights there is no k̂ (NaN) on either ArviZ line
MIN_PSIS_WEIGHTS = 25


def pareto_khat(log_weights: np.ndarray) -> float:
    """The Pareto k̂ of importance log-weights (Vehtari, Simpson, Gelman, Yao & Gabry 2024,
    PSIS), by the installed ArviZ line's own PSIS: above 0.7 the weights' variance is too heavy
    for their mean to be trusted. NaN for fewer than ``MIN_PSIS_WEIGHTS`` weights."""
    log_weights = np.asarray(log_weights, dtype=float)
    if log_weights.size < MIN_PSIS_WEIGHTS:
        return float("nan")
    _, khat = _psislw(log_weights)
    return float(khat)
