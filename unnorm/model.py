"""Declaring an unnormalized model: an energy ``E(x; θ)`` with density ``p(x) ∝ exp(-E(x; θ))``.

Two ways lead to the same :class:`Model`:

* functional — ``Model(energy, params=..., constraints=..., support=...)`` with
  ``energy(params, x)`` a scalar function of one observation;
* declarative — a function of ``x`` decorated with :func:`model` that declares its parameters
  with :func:`param`, as in a NumPyro model.

The model is Song & Kingma 2021, eq. 1: ``p_θ(x) = exp(-E_θ(x)) / Z_θ``; its score (eq. 5) is
``∇_x log p_θ(x) = -∇_x E_θ(x)``, free of the normalizing constant ``Z_θ``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pickle
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints as _constraints
from numpyro.distributions.transforms import biject_to

from .errors import data_scale
from .supports import Support

__all__ = ["Model", "model", "param", "energies", "check_finite_energies"]

Params = dict[str, Any]


def format_params(params: Mapping[str, Any], limit: int = 6) -> str:
    """One line per parameter with (a prefix of) its value, for error messages."""
    lines = []
    for name, value in params.items():
        leaves = jax.tree_util.tree_leaves(value)
        if len(leaves) == 1:
            arr = np.asarray(leaves[0])
            flat = arr.ravel()
            shown = np.array2string(flat[:limit], precision=4, separator=", ")
            more = f" ... ({arr.size} values, shape {arr.shape})" if arr.size > limit else ""
            lines.append(f"  {name} = {shown}{more}")
        else:
            lines.append(f"  {name} = <pytree with {len(leaves)} arrays>")
    return "\n".join(lines)


def _as_float_array(leaf: Any) -> jax.Array:
    """``jnp.asarray(leaf, dtype=float)``, cast by NumPy where the leaf is on the host: the
    same rounding, without the conversion program a device cast compiles per shape, and sent
    over by a plain transfer (``jnp.asarray`` of a NumPy array also compiles one per shape)."""
    if isinstance(leaf, jax.Array):  # tracers included
        return jnp.asarray(leaf, dtype=float)
    return jax.device_put(np.asarray(leaf, dtype=jnp.result_type(float)))


@jax.jit
def _satisfies_jit(constraint, leaf) -> jax.Array:
    return jnp.all(constraint.check(leaf))


def _satisfies(constraint, leaf) -> bool:
    """Whether ``leaf`` satisfies ``constraint``: one compiled program per constraint type
    and shape (NumPyro's constraints are pytrees), where the check run op by op compiled
    each of its operations (five for ``positive_definite``) for every new shape."""
    try:
        return bool(_satisfies_jit(constraint, leaf))
    except (NotImplementedError, jax.errors.JAXTypeError):
        # a user's Constraint subclass that is not a pytree, or whose check needs the value
        # itself (a Python branch on it, NumPy on it): checked op by op, on the value
        return bool(jnp.all(constraint.check(leaf)))


def _as_param_tree(name: str, value: Any, arg: str = "params") -> Any:
    """Convert the leaves of one parameter to float arrays and reject complex values and
    NaN / inf; ``arg`` names the argument in the messages (``params``, ``init``...)."""
    for leaf in jax.tree_util.tree_leaves(value):
        if np.iscomplexobj(leaf):
            raise TypeError(
                f"{arg}[{name!r}] is complex (dtype {np.asarray(leaf).dtype}); parameters must "
                "be real (a float conversion would silently drop the imaginary part). Declare "
                "the real and imaginary parts as two real parameters and combine them inside "
                "the energy."
            )
    try:
        tree = jax.tree_util.tree_map(_as_float_array, value)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{arg}[{name!r}] must be an array (or a pytree of arrays) of numbers; got "
            f"{type(value).__name__}: {err}"
        ) from None
    for leaf in jax.tree_util.tree_leaves(tree):
        # on the host: op by op on the device, the check compiled two programs per shape
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(
                f"{arg}[{name!r}] contains NaN or infinite values: "
                f"{np.array2string(np.asarray(leaf).ravel()[:6], precision=4)}; initial "
                "parameter values must be finite."
            )
    return tree


class Model:
    """An unnormalized model ``p(x; θ) ∝ exp(-E(x; θ))`` (Song & Kingma 2021, eq. 1).

    Parameters
    ----------
    energy : callable
        ``energy(params, x) -> scalar`` for ONE observation ``x`` of shape
        ``support.event_shape``; ``params`` is a dict like ``params`` below.
    params : dict
        Initial parameter values (constrained space), name -> array or pytree of arrays.
    constraints : dict, optional
        Name -> NumPyro constraint (``unnorm.constraints``); missing names are unconstrained
        (``constraints.real``). They map to an unconstrained space through NumPyro's
        ``biject_to``.
    support : Support
        Where one observation lives (``unnorm.supports``).
    name : str, optional
        A label used in messages and summaries.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import unnorm as un
    >>> def energy(params, x):
    ...     d = x - params["mu"]
    ...     return 0.5 * d @ params["prec"] @ d
    >>> m = un.Model(energy, params={"mu": jnp.zeros(2), "prec": jnp.eye(2)},
    ...              constraints={"prec": un.constraints.positive_definite},
    ...              support=un.supports.real(2))
    >>> float(m.energy(m.params, jnp.ones(2)))
    1.0
    >>> m.score(m.params, jnp.ones(2)).tolist()
    [-1.0, -1.0]
    """

    # _declared: (module, qualname) of the function @un.model turned into this model, which
    # pickle then finds by name (the function's own name is bound to the Model)
    # _structure: what the model is made of, as a hashable value (:func:`_structure_key`): two
    # models built alike are equal, so JAX's compiled programs, keyed on the model as a static
    # argument, serve both
    __slots__ = ("_energy_fn", "_params", "_constraints", "_support", "_name", "_declared",
                 "_structure")

    def __init_subclass__(cls, **kwargs):
        raise TypeError("unnorm.Model is final; write a function that returns a Model instead.")

    def __init__(
        self,
        energy: Callable[[Params, jax.Array], jax.Array],
        params: Mapping[str, Any],
        constraints: Mapping[str, Any] | None = None,
        support: Support | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(energy):
            raise TypeError(
                f"energy must be a callable energy(params, x) -> scalar; got "
                f"{type(energy).__name__}."
            )
        if not isinstance(params, Mapping):
            raise TypeError(
                f"params must be a dict of name -> initial value; got {type(params).__name__}."
            )
        if not isinstance(support, Support):
            raise TypeError(
                "support must be one of un.supports.real(d), positive(d), interval(low, high, d), "
                f"binary(d), spin(d); got {support!r}."
            )
        for key in params:
            if not isinstance(key, str):
                raise TypeError(f"params keys must be strings; got {key!r}.")
        checked = {k: _as_param_tree(k, v) for k, v in params.items()}
        cons = dict(constraints or {})
        unknown = sorted(set(cons) - set(checked))
        if unknown:
            raise ValueError(
                f"constraints name parameter(s) {unknown} that are not in params "
                f"(params has {sorted(checked)})."
            )
        for key, con in cons.items():
            if not isinstance(con, _constraints.Constraint):
                raise TypeError(
                    f"constraints[{key!r}] must be a constraint from unnorm.constraints "
                    f"(e.g. constraints.positive); got {con!r}."
                )
            for leaf in jax.tree_util.tree_leaves(checked[key]):
                if not _satisfies(con, leaf):
                    raise ValueError(
                        f"the initial value of params[{key!r}] violates its constraint {con}:\n"
                        f"{format_params({key: leaf})}\nGive an initial value inside the "
                        "constraint."
                    )
        for key in checked:
            cons.setdefault(key, _constraints.real)

        object.__setattr__(self, "_energy_fn", energy)
        object.__setattr__(self, "_params", checked)
        object.__setattr__(self, "_constraints", cons)
        object.__setattr__(self, "_support", support)
        object.__setattr__(self, "_name", name or getattr(energy, "__name__", "model"))
        object.__setattr__(self, "_declared", None)
        object.__setattr__(self, "_structure", _structure_key(
            energy, checked, cons, support, self._name))
        self._check_energy_shape()

    def __setattr__(self, key, value):
        raise AttributeError("unnorm.Model is immutable; build a new Model to change it.")

    # ---- equality ------------------------------------------------------------------------------
    def __eq__(self, other) -> bool:
        """Two models are equal when they are built alike: the same energy (the same function,
        or a ``functools.partial`` of the same importable function with equal arguments), equal
        initial parameters, constraints, support and name. Compiled programs are keyed on the
        model, so a model built again (``un.models.gaussian(2)`` inside a simulation loop)
        reuses what the first one compiled. Energies that are lambdas or closures are equal only
        to themselves, being the same function object."""
        if self is other:
            return True
        if not isinstance(other, Model):
            return NotImplemented
        return self._structure == other._structure

    def __hash__(self) -> int:
        return hash(self._structure)

    # ---- copy and pickle -----------------------------------------------------------------------
    def __copy__(self) -> Model:
        # Immutable, holding immutable arrays and a function: a copy may be the model itself,
        # as for a tuple, and keeps the compiled code cached on it.
        return self

    def __deepcopy__(self, memo: dict) -> Model:
        return self

    def __reduce__(self):
        """Pickle through the constructor, the energy stored by its importable name; a model
        declared with ``@un.model`` at the top level of a module is stored by that name.
        Lambdas and closures go through cloudpickle when it is installed; otherwise a
        ``TypeError`` says how to make the model picklable."""
        if self._declared is not None:
            module, qualname = self._declared
            if _lookup(module, qualname) is self:
                return _declared_model, (module, qualname)
            what = f"its function {qualname!r} is declared with @un.model inside another function"
        else:
            if _pickles_by_name(self._energy_fn):
                return Model, self._constructor_args()
            label = getattr(self._energy_fn, "__qualname__", type(self._energy_fn).__name__)
            what = (f"its energy {label!r} is a lambda or a function defined inside another "
                    "function (a closure)")
        try:
            import cloudpickle
        except ImportError:
            raise TypeError(
                f"cannot pickle the model {self._name!r}: {what}, and pickle stores functions "
                "only by their importable name. Define it with def at the top level of a module "
                "(pass what it closes over as params or through functools.partial), or install "
                "cloudpickle (pip install cloudpickle), which unnorm then uses for such models."
            ) from None
        return _from_cloudpickle, (cloudpickle.dumps(self._constructor_args()),)

    def _constructor_args(self) -> tuple:
        # NumPy leaves: the pickle does not depend on JAX's devices
        params = {k: jax.tree_util.tree_map(np.asarray, v) for k, v in self._params.items()}
        return self._energy_fn, params, dict(self._constraints), self._support, self._name

    def __repr__(self) -> str:
        shapes = {k: tuple(np.shape(v)) for k, v in self._params.items()}
        return f"Model({self._name!r}, support={self._support!r}, params={shapes})"

    def _check_energy_shape(self) -> None:
        x = self._support.reference_point()
        try:
            out = jax.eval_shape(self._energy_fn, self._params, x)
        except Exception as err:  # the user's function: surface any failure with context
            raise ValueError(
                f"energy(params, x) failed for x of shape {self.event_shape} (one observation of "
                f"the support {self._support!r}) and the initial params: "
                f"{type(err).__name__}: {err}"
            ) from err
        if jnp.issubdtype(getattr(out, "dtype", np.float32), jnp.complexfloating):
            raise TypeError(
                f"energy(params, x) returned a complex value (dtype {out.dtype}) for x of shape "
                f"{self.event_shape}; an energy must be real (the density is exp(-E)). Return a "
                "real quantity of any complex intermediate z, e.g. jnp.abs(z) ** 2 or jnp.real(z)."
            )
        if not hasattr(out, "shape") or out.shape != ():
            shape = getattr(out, "shape", type(out).__name__)
            raise ValueError(
                f"energy(params, x) must return a scalar for ONE observation x of shape "
                f"{self.event_shape}; it returned shape {shape}. Reduce over the event dims "
                "(e.g. with .sum()); batching over observations is done by unnorm with vmap."
            )

    # ---- read-only facts -----------------------------------------------------------------------
    @property
    def params(self) -> Params:
        """Initial parameter values (constrained space), a fresh dict."""
        return dict(self._params)

    @property
    def constraints(self) -> dict[str, Any]:
        """Name -> NumPyro constraint, ``constraints.real`` where none was given."""
        return dict(self._constraints)

    @property
    def support(self) -> Support:
        """The support of one observation."""
        return self._support

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one observation."""
        return self._support.event_shape

    @property
    def name(self) -> str:
        """The model's label."""
        return self._name

    @property
    def dtype(self) -> np.dtype:
        """The floating-point dtype of the parameters, in which fits and samplers compute
        (float32 unless JAX's x64 mode was on when the model was built); data are checked to
        fit in it.

        Examples
        --------
        >>> import unnorm as un
        >>> un.models.gaussian(2).dtype
        dtype('float32')
        """
        leaves = jax.tree_util.tree_leaves(self._params)
        return np.dtype(jnp.result_type(*leaves) if leaves else jnp.result_type(float))

    @property
    def energy_fn(self) -> Callable[[Params, jax.Array], jax.Array]:
        """The user's energy function, unchanged."""
        return self._energy_fn

    # ---- the energy and what follows from it ---------------------------------------------------
    @property
    def noise_conditional(self) -> bool:
        """Whether the energy takes a noise level, ``energy(params, x, sigma)``: a
        noise-conditional energy (Song & Ermon 2019), trained by multi-level DSM and sampled by
        annealed Langevin dynamics."""
        try:
            return "sigma" in inspect.signature(self._energy_fn).parameters
        except (TypeError, ValueError):
            return False

    def energy(self, params: Params, x: jax.Array, sigma=None) -> jax.Array:
        """Energy ``E(x; θ)`` of one observation (a scalar); density ∝ exp(-E) (eq. 1). For a
        noise-conditional energy, ``sigma`` is the noise level it is told (None: the energy's
        own default)."""
        if sigma is None:
            return self._energy_fn(params, x)
        return self._energy_fn(params, x, sigma=sigma)

    def score(self, params: Params, x: jax.Array) -> jax.Array:
        """Score ``∇_x log p(x; θ) = -∇_x E(x; θ)`` (Song & Kingma 2021, eq. 5), shape
        ``event_shape``."""
        return -jax.grad(self._energy_fn, argnums=1)(params, x)

    # ---- constrained <-> unconstrained parameters ----------------------------------------------
    def to_unconstrained(self, params: Params) -> Params:
        """Map constrained params to the unconstrained space with NumPyro's ``biject_to``."""
        return _transformed(params, model=self, inverse=True)

    def to_constrained(self, unconstrained: Params) -> Params:
        """Inverse of :meth:`to_unconstrained`."""
        return _transformed(unconstrained, model=self, inverse=False)

    def _transform(self, params: Params, inverse: bool) -> Params:
        return {
            k: jax.tree_util.tree_map(
                biject_to(self._constraints[k]).inv if inverse else biject_to(self._constraints[k]),
                v)
            for k, v in params.items()
        }

    def check_params(self, params: Any, name: str = "params") -> Params:
        """Validate a params dict against this model: same names, finite values, constraints.

        Returns the params with float-array leaves. Raises ``ValueError``/``TypeError`` naming
        the offending parameter.
        """
        if not isinstance(params, Mapping):
            raise TypeError(
                f"{name} must be a dict like model.params; got {type(params).__name__}."
            )
        missing = sorted(set(self._params) - set(params))
        extra = sorted(set(params) - set(self._params))
        if missing or extra:
            raise ValueError(
                f"{name} must have the model's parameter names {sorted(self._params)}; "
                f"missing {missing}, unexpected {extra}."
            )
        checked = {}
        for key, value in params.items():
            stored = self._params[key]
            if _same_leaves(value, stored):
                # the model's own values, validated when it was built: no eager re-check
                checked[key] = stored
                continue
            tree = _as_param_tree(key, value, name)
            ref = jax.tree_util.tree_structure(stored)
            if jax.tree_util.tree_structure(tree) != ref:
                raise ValueError(f"{name}[{key!r}] does not have the structure of model.params.")
            for leaf, ref_leaf in zip(
                jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(self._params[key]),
                strict=True,
            ):
                if leaf.shape != ref_leaf.shape:
                    raise ValueError(
                        f"{name}[{key!r}] has shape {leaf.shape}; the model expects "
                        f"{ref_leaf.shape}."
                    )
                con = self._constraints[key]
                # real asks only finiteness, which _as_param_tree checked on the host
                if con is not _constraints.real and not bool(jnp.all(con.check(leaf))):
                    raise ValueError(
                        f"{name}[{key!r}] violates its constraint {con}:\n"
                        f"{format_params({key: leaf})}"
                    )
            checked[key] = tree
        return checked


def _value_key(value: Any) -> Any:
    """A hashable stand-in for ``value`` that is equal exactly when the values are (arrays by
    dtype, shape and bytes), or None when there is no such stand-in."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return (type(value), value)
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        if isinstance(value, jax.core.Tracer):
            return None
        array = np.asarray(value)
        return ("array", array.dtype.str, array.shape, array.tobytes())
    if isinstance(value, (tuple, list)):
        keys = tuple(_value_key(v) for v in value)
        return None if any(k is None for k in keys) else (type(value), keys)
    if callable(value):
        return _function_key(value)
    return None


def _function_key(fn: Callable) -> Any:
    """A function importable by its name (the same object wherever it is looked up), or a
    ``functools.partial`` of one with arguments :func:`_value_key` can hold; None otherwise.
    Lambdas and closures return None: the values they close over, or the globals they read,
    could differ between two functions of the same code."""
    if isinstance(fn, functools.partial):
        inner = _function_key(fn.func)
        args = _value_key(tuple(fn.args))
        keywords = _value_key(tuple(sorted(fn.keywords.items())))
        if inner is None or args is None or keywords is None:
            return None
        return ("partial", inner, args, keywords)
    if (inspect.isfunction(fn) and "<" not in fn.__qualname__
            and _lookup(fn.__module__, fn.__qualname__) is fn):
        return fn
    return None


def _structure_key(energy: Callable, params: Mapping[str, Any], constraints: Mapping[str, Any],
                   support: Support, name: str) -> tuple:
    """What a model is made of, as a hashable value (see :meth:`Model.__eq__`). An energy or
    constraint without a structural stand-in enters as itself, by identity."""
    energy_key = _function_key(energy)
    if energy_key is None:
        energy_key = ("object", _identity(energy))
    params_key = []
    for pname in sorted(params):
        leaves, tree = jax.tree_util.tree_flatten(params[pname])
        params_key.append((pname, tree, tuple(_value_key(leaf) for leaf in leaves)))
    constraints_key = []
    for pname in sorted(constraints):
        con = constraints[pname]
        fields = _value_key(tuple(sorted(vars(con).items()))) if hasattr(con, "__dict__") else ()
        constraints_key.append((pname, type(con), fields if fields is not None
                                else ("object", _identity(con))))
    support_key = (support.kind, support.event_shape, _value_key(support.low),
                   _value_key(support.high))
    return (energy_key, tuple(params_key), tuple(constraints_key), support_key, name)


class _identity:
    """Hashes and compares an object by identity, whatever its own ``__eq__``, and keeps it
    alive as long as the key (so its id is not reused)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other) -> bool:
        return isinstance(other, _identity) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _pickles_by_name(fn: Callable) -> bool:
    """Whether plain pickle can store ``fn`` (a function by its importable name, a
    ``functools.partial`` of one with picklable arguments, a picklable callable object)."""
    try:
        pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def _lookup(module: str, qualname: str) -> Any:
    """The object named ``module.qualname``, or None when there is none."""
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj


def _declared_model(module: str, qualname: str) -> Model:
    """Unpickle a model declared with ``@un.model`` at the top level of a module."""
    model = _lookup(module, qualname)
    if not isinstance(model, Model):
        raise pickle.UnpicklingError(f"{module}.{qualname} is no longer an unnorm.Model.")
    return model


def _from_cloudpickle(payload: bytes) -> Model:
    """Unpickle a model whose energy cloudpickle stored (plain pickle reads cloudpickle's
    output when cloudpickle is importable)."""
    return Model(*pickle.loads(payload))


def _same_leaves(value: Any, stored: Any) -> bool:
    """Whether ``value`` is ``stored`` leaf for leaf (the very same array objects)."""
    leaves, tree = jax.tree_util.tree_flatten(value)
    stored_leaves, stored_tree = jax.tree_util.tree_flatten(stored)
    return tree == stored_tree and all(a is b for a, b in zip(leaves, stored_leaves, strict=True))


# ---- the declarative form -----------------------------------------------------------------------

_handlers = threading.local()


def _handler_stack() -> list:
    if not hasattr(_handlers, "stack"):
        _handlers.stack = []
    return _handlers.stack


def param(name: str, init: Any, constraint: Any = _constraints.real) -> Any:
    """Declare a parameter inside a function decorated with :func:`model`.

    Parameters
    ----------
    name : str
        Unique parameter name; it becomes a key of ``model.params``.
    init : array or pytree of arrays
        Initial (constrained) value.
    constraint : numpyro constraint, optional
        Default ``constraints.real``.

    Returns
    -------
    The parameter's current value: ``init`` while the model is being declared, the value being
    evaluated afterwards.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import unnorm as un
    >>> @un.model(support=un.supports.real(1))
    ... def quartic(x):
    ...     a = un.param("a", 1.0, constraint=un.constraints.positive)
    ...     return a * jnp.sum(x**4)
    >>> sorted(quartic.params)
    ['a']
    """
    stack = _handler_stack()
    if not stack:
        raise RuntimeError(
            f"un.param({name!r}, ...) was called outside a model: declare parameters inside a "
            "function decorated with @un.model(support=...)."
        )
    if not isinstance(name, str):
        raise TypeError(f"un.param: name must be a string; got {name!r}.")
    return stack[-1](name, init, constraint)


def model(fn: Callable | None = None, *, support: Support | None = None, name: str | None = None):
    """Decorator: turn ``fn(x) -> energy`` that declares parameters with :func:`param` into a
    :class:`Model`.

    The function is run once, eagerly, on a reference point of ``support`` to collect the
    parameters, their initial values and constraints; afterwards every evaluation substitutes
    the values being evaluated.

    Parameters
    ----------
    support : Support
        Where one observation lives (required).
    name : str, optional
        Label of the model; default the function's name.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import unnorm as un
    >>> @un.model(support=un.supports.real(2))
    ... def gaussian(x):
    ...     mu = un.param("mu", jnp.zeros(2))
    ...     prec = un.param("prec", jnp.eye(2), constraint=un.constraints.positive_definite)
    ...     d = x - mu
    ...     return 0.5 * d @ prec @ d
    >>> isinstance(gaussian, un.Model)
    True
    """
    if fn is not None and support is None:
        raise TypeError(
            "@un.model needs a support: write @un.model(support=un.supports.real(d)) (or "
            "positive, interval, binary, spin)."
        )

    def build(fn: Callable) -> Model:
        if not isinstance(support, Support):
            raise TypeError(
                f"@un.model(support=...) must be given an unnorm support; got {support!r}."
            )
        declared: dict[str, tuple[Any, Any]] = {}

        def collect(pname, init, constraint):
            if pname in declared:
                raise ValueError(
                    f"un.param({pname!r}, ...) is declared twice in model {fn.__name__!r}; "
                    "parameter names must be unique."
                )
            if any(np.iscomplexobj(leaf) for leaf in jax.tree_util.tree_leaves(init)):
                raise TypeError(
                    f"un.param({pname!r}, init): init is complex; parameters must be real. "
                    "Declare the real and imaginary parts as two real parameters."
                )
            declared[pname] = (init, constraint)
            return jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype=float), init)

        stack = _handler_stack()
        stack.append(collect)
        try:
            fn(support.reference_point())
        finally:
            stack.pop()
        if not declared:
            raise ValueError(
                f"model {fn.__name__!r} declares no parameters; call un.param(...) inside it, or "
                "use un.Model(energy, params={}, support=...) for a model without parameters."
            )

        def energy(params, x):
            def substitute(pname, init, constraint):
                return params[pname]

            stack = _handler_stack()
            stack.append(substitute)
            try:
                return fn(x)
            finally:
                stack.pop()

        energy.__name__ = fn.__name__
        energy.__doc__ = fn.__doc__
        built = Model(
            energy,
            params={k: v[0] for k, v in declared.items()},
            constraints={k: v[1] for k, v in declared.items()},
            support=support,
            name=name or fn.__name__,
        )
        object.__setattr__(built, "_declared", (fn.__module__, fn.__qualname__))
        return built

    return build(fn) if fn is not None else build


@functools.partial(jax.jit, static_argnames=("model", "inverse"))
def _transformed(params: Params, *, model: Model, inverse: bool) -> Params:
    # One compiled program per model and direction, also where the maps are called outside
    # compiled code (the fit's post-processing, intervals): run op by op, a positive-definite
    # matrix's transform compiled dozens of small programs on a model's first fit.
    return model._transform(params, inverse)


@functools.partial(jax.jit, static_argnames=("model",))
def _energies_jit(params, xs, *, model: Model) -> jax.Array:
    return jax.vmap(lambda x: model.energy(params, x))(xs)


def energies(model: Model, params, xs) -> jax.Array:
    """``E(x; params)`` for each row of ``xs`` (one compiled function per model).

    Examples
    --------
    >>> import jax.numpy as jnp, unnorm as un
    >>> m = un.models.gaussian(1)
    >>> [float(e) for e in energies(m, m.params, jnp.array([[0.0], [2.0]]))]
    [0.0, 2.0]
    """
    return _energies_jit(params, xs, model=model)


def check_finite_energies(model: Model, params, data, name: str = "data") -> None:
    """Raise ``ValueError`` when the energy is NaN or infinite at some rows of ``data`` at
    ``params``, naming the first rows and the parameter values: every estimator's objective
    would otherwise be undefined there (a closed form computed from NaN, or an optimizer
    stopped at its first step)."""
    values = np.asarray(energies(model, params, data))
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        rows = ", ".join(str(int(r)) for r in bad[:5]) + (", ..." if bad.size > 5 else "")
        point = np.array2string(np.asarray(data[bad[0]]).ravel()[:6], precision=4)
        overflow = ""
        if np.any(np.isinf(values[bad])):
            # an infinite energy at large data is most often float overflow, not the domain
            overflow = (f" An infinite energy can be an overflow of {values.dtype} ("
                        f"{data_scale(np.asarray(data))}): rescale the data if so.")
        raise ValueError(
            f"the energy is not finite at {bad.size} row(s) of {name} (rows {rows}; row "
            f"{int(bad[0])} is x = {point}, energy {values[bad[0]]}) with the parameter "
            f"values:\n{format_params(params)}\nCheck the energy's domain (a log or a division "
            "of values the data reach), drop those rows, or start from other init values."
            + overflow
        )
