"""Supports: the space an observation ``x`` lives in.

A support fixes the event shape of one observation and tells every other part of the library what
it may do: continuous supports (``real``, ``positive``, ``interval``) are sampled by gradient-based
kernels in an unconstrained space reached through NumPyro's ``biject_to``; discrete supports
(``binary`` = {0,1}^d, ``spin`` = {-1,+1}^d) are sampled by Gibbs and can be enumerated for an exact
normalizing constant (Song & Kingma 2021, eq. 2 with the integral a sum).

Examples
--------
>>> import unnorm as un
>>> un.supports.real(2).event_shape
(2,)
>>> un.supports.spin((3, 3)).size
9
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

__all__ = ["Support", "real", "positive", "interval", "binary", "spin"]


def _event_shape(d, name: str) -> tuple[int, ...]:
    if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
        shape = (int(d),)
    elif isinstance(d, (tuple, list)) and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in d
    ):
        shape = tuple(int(s) for s in d)
    else:
        raise TypeError(
            f"{name}: the dimension `d` must be a positive int or a tuple of positive ints "
            f"(the event shape of one observation); got {d!r}."
        )
    if any(s < 1 for s in shape):
        raise ValueError(f"{name}: every entry of the event shape must be >= 1; got {shape}.")
    return shape


@dataclass(frozen=True, eq=False)
class Support:
    """The space one observation lives in.

    Build one with :func:`real`, :func:`positive`, :func:`interval`, :func:`binary` or
    :func:`spin` rather than directly.

    Attributes
    ----------
    kind : str
        One of ``"real"``, ``"positive"``, ``"interval"``, ``"binary"``, ``"spin"``.
    event_shape : tuple of int
        Shape of one observation ``x``.
    low, high : numpy.ndarray or None
        Bounds of an ``interval`` support, broadcast to ``event_shape``.
    """

    kind: str
    event_shape: tuple[int, ...]
    low: np.ndarray | None = field(default=None, repr=False)
    high: np.ndarray | None = field(default=None, repr=False)

    # ---- facts ---------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of scalar coordinates in one observation."""
        return math.prod(self.event_shape)

    @property
    def is_discrete(self) -> bool:
        """True for ``binary`` and ``spin``."""
        return self.kind in ("binary", "spin")

    @property
    def values(self) -> tuple[float, float]:
        """The two values a coordinate of a discrete support takes, (off, on)."""
        if self.kind == "binary":
            return (0.0, 1.0)
        if self.kind == "spin":
            return (-1.0, 1.0)
        raise AttributeError(f"support {self.kind!r} is continuous; it has no finite value set.")

    @property
    def constraint(self):
        """The NumPyro constraint of one observation (continuous supports only)."""
        ndims = len(self.event_shape)
        if self.kind == "real":
            base = constraints.real
        elif self.kind == "positive":
            base = constraints.positive
        elif self.kind == "interval":
            base = constraints.interval(jnp.asarray(self.low), jnp.asarray(self.high))
        else:
            raise AttributeError(
                f"support {self.kind!r} is discrete; it has no constraint to transform through."
            )
        return constraints.independent(base, ndims) if ndims else base

    @property
    def transform(self):
        """Bijection from the unconstrained space onto the support (continuous supports only)."""
        return biject_to(self.constraint)

    def __repr__(self) -> str:
        if self.kind == "interval":
            lo, hi = (b.flat[0] if np.unique(b).size == 1 else b for b in (self.low, self.high))
            return f"interval(low={lo}, high={hi}, d={self.event_shape})"
        return f"{self.kind}(d={self.event_shape})"

    # ---- checks --------------------------------------------------------------------------------
    def check_data(self, data, name: str = "data", dtype=None) -> np.ndarray:
        """Validate a data set of shape ``(n, *event_shape)`` and return it as a float array.

        ``dtype`` is the floating-point type the data will be used in (the parameters'
        dtype, float32 unless JAX's x64 mode is on); None checks in float64 only.

        Raises
        ------
        ValueError
            Naming ``name``, when the shape does not match, a value is NaN or infinite (with the
            row index), a value overflows ``dtype`` (it would become infinite there), or a value
            lies outside the support.

        Examples
        --------
        >>> import numpy as np
        >>> try:
        ...     real(1).check_data(np.array([[1.0], [1e39]]), dtype=np.float32)
        ... except ValueError as err:
        ...     print(str(err)[:60])
        data has 1 value(s) too large for float32 (first at row 1: 1
        """
        _refuse_complex(data, name)
        try:
            arr = np.asarray(data, dtype=float)
        except (TypeError, ValueError) as err:
            shape = ", ".join(map(str, ("n", *self.event_shape)))
            raise TypeError(
                f"{name} must be an array of numbers of shape ({shape}); could not convert a "
                f"{type(data).__name__}: {err}"
            ) from None
        expected = (len(self.event_shape) + 1, self.event_shape)
        if arr.ndim != expected[0] or arr.shape[1:] != self.event_shape:
            raise ValueError(
                f"{name} has shape {arr.shape}, but the model's support {self!r} needs shape "
                f"(n, {', '.join(map(str, self.event_shape))}): one row per observation."
            )
        if arr.shape[0] < 1:
            raise ValueError(f"{name} has no observations (shape {arr.shape}).")
        self._check_values(arr, name, batched=True, dtype=dtype)
        return arr

    def check_point(self, x, name: str = "x", dtype=None) -> np.ndarray:
        """Validate a single observation of shape ``event_shape`` (``dtype`` as in
        :meth:`check_data`)."""
        _refuse_complex(x, name)
        arr = np.asarray(x, dtype=float)
        if arr.shape != self.event_shape:
            raise ValueError(
                f"{name} has shape {arr.shape}, but the model's support {self!r} needs shape "
                f"{self.event_shape}."
            )
        self._check_values(arr[None], name, batched=False, dtype=dtype)
        return arr

    def _check_values(self, arr: np.ndarray, name: str, batched: bool, dtype=None) -> None:
        axes = tuple(range(1, arr.ndim))

        def first_bad_row(bad: np.ndarray) -> str:
            row = int(np.argmax(bad.any(axis=axes) if axes else bad))
            return f" (first at row {row})" if batched else ""

        bad = ~np.isfinite(arr)
        if bad.any():
            raise ValueError(
                f"{name} contains {int(bad.sum())} NaN or infinite value(s){first_bad_row(bad)}; "
                "remove or impute them before fitting or sampling."
            )
        if dtype is not None and np.issubdtype(dtype, np.floating):
            # finite in float64 but infinite once cast: the failure would surface later as a
            # non-finite loss, blamed on the energy
            limit = float(np.finfo(dtype).max)
            bad = np.abs(arr) > limit
            if bad.any():
                kind = np.dtype(dtype).name
                first = float(arr[bad][0])  # C order: a value of the first bad row
                where = f"first at row {int(np.argmax(bad.any(axis=axes)))}: " if batched else ""
                raise ValueError(
                    f"{name} has {int(bad.sum())} value(s) too large for {kind} ({where}"
                    f"{first:.3g}; {kind} holds "
                    f"magnitudes up to {limit:.2g}), where unnorm computes with them (the "
                    "parameters' dtype): they would become infinite. Rescale the data (e.g. "
                    "standardize each coordinate), or compute in float64 with "
                    "jax.config.update('jax_enable_x64', True) before building the model."
                )
        if self.is_discrete:
            lo, hi = self.values
            bad = (arr != lo) & (arr != hi)
            if bad.any():
                vals = np.unique(arr[bad])[:5]
                raise ValueError(
                    f"{name} has values outside {{{lo:g}, {hi:g}}} for the {self.kind} support"
                    f"{first_bad_row(bad)}: e.g. {vals.tolist()}."
                    + (" Spin data uses -1/+1; use un.supports.binary for 0/1 data."
                       if self.kind == "spin" else
                       " Binary data uses 0/1; use un.supports.spin for -1/+1 data.")
                )
        elif self.kind == "positive":
            bad = arr <= 0
            if bad.any():
                raise ValueError(
                    f"{name} has {int(bad.sum())} value(s) <= 0, outside the positive support"
                    f"{first_bad_row(bad)}."
                )
        elif self.kind == "interval":
            bad = (arr < self.low) | (arr > self.high)
            if bad.any():
                raise ValueError(
                    f"{name} has {int(bad.sum())} value(s) outside the support {self!r}"
                    f"{first_bad_row(bad)}."
                )

    # ---- points --------------------------------------------------------------------------------
    def initial_unconstrained(self, key, num_chains: int) -> np.ndarray:
        """Dispersed starting points in the unconstrained space, shape
        ``(num_chains, *event_shape)``, as a NumPy array.

        Continuous supports draw Uniform(-2, 2) (Stan's convention); discrete supports draw each
        coordinate uniformly from its values. The draw is NumPy's, seeded from the key's data:
        a handful of numbers needs no compiled generator (which costs a first call of
        ``un.sample`` about 0.3 s of compilation), and the same key gives the same points.
        Chain ``c`` draws from the ``c``-th child of the key's seed sequence, so its point does
        not depend on ``num_chains``.

        Examples
        --------
        >>> import jax, unnorm as un
        >>> un.supports.positive(2).initial_unconstrained(jax.random.key(0), 3).shape
        (3, 2)
        """
        seeds = np.random.SeedSequence(np.asarray(jax.random.key_data(key)).ravel()).spawn(
            num_chains)
        rows = [np.random.default_rng(seed).random(self.event_shape) for seed in seeds]
        uniform = np.stack(rows) if rows else np.zeros((0, *self.event_shape))
        if self.is_discrete:
            lo, hi = self.values
            return np.where(uniform < 0.5, hi, lo).astype(float)
        return -2.0 + 4.0 * uniform

    def initial_positions(self, key, num_chains: int) -> jax.Array:
        """Dispersed starting points on the support, shape ``(num_chains, *event_shape)``:
        :meth:`initial_unconstrained` mapped onto the support."""
        unconstrained = _to_device(self.initial_unconstrained(key, num_chains))
        return unconstrained if self.is_discrete else self.transform(unconstrained)

    def reference_point(self) -> jax.Array:
        """A typical point of the support, used to probe an energy for shape errors."""
        if self.kind == "real":
            point = np.zeros(self.event_shape)
        elif self.kind == "positive":
            point = np.ones(self.event_shape)
        elif self.kind == "interval":
            point = 0.5 * (np.asarray(self.low) + np.asarray(self.high))
        else:
            point = np.full(self.event_shape, self.values[1])
        return _to_device(point)

    def enumerate(self, start: int = 0, stop: int | None = None) -> jax.Array:
        """Configurations ``start .. stop-1`` of a discrete support in binary counting order,
        shape ``(stop - start, *event_shape)``; see :meth:`configurations`."""
        stop = 2**self.size if stop is None else stop
        return self.configurations(np.arange(start, stop, dtype=np.uint32))

    def configurations(self, index: jax.Array) -> jax.Array:
        """The configurations numbered ``index`` (a uint32 array) of a discrete support.

        Configuration ``k`` sets coordinate ``j`` (in C order) on when bit ``size-1-j`` of ``k``
        is 1. Shape ``(*index.shape, *event_shape)``.
        """
        lo, hi = self.values
        # a host index (NumPy, Python ints) is decoded on the host and sent over once: op by op
        # on the device, each new index shape compiled five small programs
        xp = jnp if isinstance(index, jax.Array) else np
        shifts = xp.arange(self.size - 1, -1, -1, dtype=np.uint32)
        bits = (xp.asarray(index, dtype=np.uint32)[..., None] >> shifts) & 1
        configs = xp.where(bits == 1, hi, lo).reshape((*np.shape(index), *self.event_shape))
        return configs if xp is jnp else _to_device(configs)


def _to_device(values) -> jax.Array:
    """Host values as a JAX array of the default float dtype, cast by NumPy: a plain transfer,
    where ``jnp.asarray`` or ``jnp.full`` compile a small program for each new shape."""
    return jax.device_put(np.asarray(values, dtype=jnp.result_type(float)))


def _refuse_complex(data, name: str) -> None:
    """A complex array would be cut to its real part by the float conversion, with only a
    NumPy warning: refuse it."""
    dtype = getattr(data, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(data).dtype
        except (TypeError, ValueError):
            return  # not an array: the float conversion reports it
    if np.issubdtype(dtype, np.complexfloating):
        raise TypeError(
            f"{name} is complex (dtype {dtype}); observations must be real numbers (a float "
            "conversion would silently drop the imaginary parts). Pass np.real(x) if the "
            "imaginary parts are zero, or model the real and imaginary parts as separate "
            "coordinates, e.g. np.concatenate([x.real, x.imag], axis=-1)."
        )


def real(d) -> Support:
    """Euclidean space R^d.

    Parameters
    ----------
    d : int or tuple of int
        Event shape of one observation; an int means a vector of that length.

    Examples
    --------
    >>> real((3, 3)).event_shape
    (3, 3)
    """
    return Support("real", _event_shape(d, "real"))


def positive(d) -> Support:
    """The positive orthant (0, inf)^d.

    Examples
    --------
    >>> positive(2).kind
    'positive'
    """
    return Support("positive", _event_shape(d, "positive"))


def interval(low, high, d) -> Support:
    """A box [low, high]^d; ``low`` and ``high`` broadcast to the event shape.

    Examples
    --------
    >>> interval(0.0, 1.0, 2)
    interval(low=0.0, high=1.0, d=(2,))
    """
    shape = _event_shape(d, "interval")
    try:
        lo = np.broadcast_to(np.asarray(low, dtype=float), shape).copy()
        hi = np.broadcast_to(np.asarray(high, dtype=float), shape).copy()
    except ValueError:
        raise ValueError(
            f"interval: low (shape {np.shape(low)}) and high (shape {np.shape(high)}) must "
            f"broadcast to the event shape {shape}."
        ) from None
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError(
            "interval: low and high must be finite; use un.supports.positive for (0, inf) or "
            "un.supports.real for unbounded coordinates."
        )
    if np.any(lo >= hi):
        raise ValueError(f"interval: need low < high everywhere; got low={low!r}, high={high!r}.")
    return Support("interval", shape, lo, hi)


def binary(d) -> Support:
    """Binary configurations {0, 1}^d (Boltzmann machines, RBM visible units).

    Examples
    --------
    >>> binary(3).values
    (0.0, 1.0)
    """
    return Support("binary", _event_shape(d, "binary"))


def spin(d) -> Support:
    """Spin configurations {-1, +1}^d (Ising models).

    Examples
    --------
    >>> spin(3).values
    (-1.0, 1.0)
    """
    return Support("spin", _event_shape(d, "spin"))
