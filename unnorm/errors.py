"""The fit's exception, in a module below every stage that raises it (the driver, the closed
form of :mod:`unnorm.solvers`), and the description of the data's scale its messages give."""

from __future__ import annotations

import numpy as np

__all__ = ["FitError", "data_scale", "data_location"]


class FitError(RuntimeError):
    """A fit that cannot go on: repeated non-finite losses or gradients, or an objective whose
    derivatives are not finite where a closed-form solve needs them."""


def data_scale(data) -> str:
    """Where the data are largest in magnitude, for messages about overflow.

    Examples
    --------
    >>> data_scale(np.array([[1.0, -2.0], [3e30, 0.0]]))
    'the largest |value| in the data is 3e+30, in row 1'
    """
    magnitude = np.abs(np.asarray(data, dtype=float)).reshape(len(data), -1)
    row = int(np.argmax(magnitude.max(axis=1)))
    return f"the largest |value| in the data is {magnitude[row].max():.3g}, in row {row}"


def data_location(data) -> str:
    """The coordinate of the data farthest from the origin in its own standard deviations,
    with its mean and standard deviation, for messages about badly scaled data.

    Example
    -------
    >>> data_location(np.array([[1000.0, 0.0], [1002.0, 1.0]]))
    'coordinate 0 of the data has mean 1e+03 and standard deviation 1.41'
    """
    flat = np.asarray(data, dtype=float).reshape(len(data), -1)
    mean = flat.mean(axis=0)
    sd = flat.std(axis=0, ddof=1) if len(flat) > 1 else np.zeros_like(mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(sd > 0, np.abs(mean) / sd, np.abs(mean))
    coordinate = int(np.argmax(np.where(np.isfinite(offset), offset, 0.0)))
    return (f"coordinate {coordinate} of the data has mean {mean[coordinate]:.3g} and "
            f"standard deviation {sd[coordinate]:.3g}")
