"""Model declaration: functional and declarative forms, energy, score, constraints."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un
from unnorm import constraints


def gaussian_energy(params, x):
    d = x - params["mu"]
    return 0.5 * d @ params["prec"] @ d


def make_functional():
    return un.Model(gaussian_energy, params={"mu": jnp.array([0.5, -1.0]),
                                             "prec": jnp.array([[2.0, 0.3], [0.3, 1.0]])},
                    constraints={"prec": constraints.positive_definite},
                    support=un.supports.real(2))


@un.model(support=un.supports.real(2))
def declared(x):
    mu = un.param("mu", jnp.array([0.5, -1.0]))
    prec = un.param("prec", jnp.array([[2.0, 0.3], [0.3, 1.0]]),
                    constraint=constraints.positive_definite)
    d = x - mu
    return 0.5 * d @ prec @ d


def test_functional_and_declarative_forms_agree():
    functional = make_functional()
    assert isinstance(declared, un.Model)
    assert sorted(declared.params) == sorted(functional.params) == ["mu", "prec"]
    assert declared.constraints["prec"] is constraints.positive_definite
    assert declared.constraints["mu"] is constraints.real
    x = jnp.array([0.3, 0.7])
    params = {"mu": jnp.array([1.0, 2.0]), "prec": jnp.array([[1.5, 0.2], [0.2, 0.5]])}
    assert float(functional.energy(params, x)) == pytest.approx(float(declared.energy(params, x)))
    np.testing.assert_allclose(functional.score(params, x), declared.score(params, x))


def test_energy_and_score_are_exact_for_a_gaussian():
    model = make_functional()
    params = model.params
    x = jnp.array([1.0, 2.0])
    d = np.asarray(x - params["mu"])
    prec = np.asarray(params["prec"])
    assert float(model.energy(params, x)) == pytest.approx(0.5 * d @ prec @ d, rel=1e-6)
    # eq. 5: score = -grad_x E = -prec (x - mu)
    np.testing.assert_allclose(model.score(params, x), -prec @ d, rtol=1e-6)
    assert model.score(params, x).shape == model.event_shape


def test_params_is_a_copy_and_model_is_immutable():
    model = make_functional()
    params = model.params
    params["mu"] = jnp.zeros(2)
    assert float(model.params["mu"][0]) == 0.5
    with pytest.raises(AttributeError, match="immutable"):
        model.support = un.supports.real(3)
    with pytest.raises(TypeError, match="final"):
        type("Sub", (un.Model,), {})


def test_unconstrained_round_trip_uses_numpyro_bijections():
    model = make_functional()
    unconstrained = model.to_unconstrained(model.params)
    # positive_definite maps to a vector of the d(d+1)/2 free Cholesky entries
    assert unconstrained["prec"].shape == (3,)
    back = model.to_constrained(unconstrained)
    np.testing.assert_allclose(back["prec"], model.params["prec"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(back["mu"], model.params["mu"])


def test_multidimensional_event_shape():
    model = un.Model(lambda p, x: jnp.sum(p["a"] * x**2), params={"a": jnp.ones((3, 3))},
                     support=un.supports.real((3, 3)))
    assert model.event_shape == (3, 3)
    assert model.score(model.params, jnp.ones((3, 3))).shape == (3, 3)


def test_pytree_params_are_accepted():
    def energy(params, x):
        hidden = jnp.tanh(params["net"]["w"] @ x + params["net"]["b"])
        return jnp.sum(hidden**2) + 0.5 * x @ x

    model = un.Model(energy, params={"net": {"w": jnp.ones((4, 2)), "b": jnp.zeros(4)}},
                     support=un.supports.real(2))
    assert jnp.isfinite(model.energy(model.params, jnp.ones(2)))


def test_param_outside_model_raises():
    with pytest.raises(RuntimeError, match="outside a model"):
        un.param("a", 1.0)


def test_declarative_model_needs_support_and_unique_names():
    with pytest.raises(TypeError, match="needs a support"):
        un.model(lambda x: x.sum())
    with pytest.raises(ValueError, match="declared twice"):
        @un.model(support=un.supports.real(1))
        def twice(x):
            return un.param("a", 1.0) * un.param("a", 2.0) * jnp.sum(x**2)


def test_builtin_models_energies():
    chain = un.models.ising_chain(3, coupling=1.0, field=0.5)
    x = jnp.array([1.0, -1.0, -1.0])
    # bonds: (1)(-1) + (-1)(-1) = 0; field: 0.5 * (-1)
    assert float(chain.energy(chain.params, x)) == pytest.approx(0.5)
    ring = un.models.ising_chain(3, coupling=1.0, periodic=True)
    assert float(ring.energy(ring.params, jnp.ones(3))) == pytest.approx(-3.0)
    matrix = jnp.array([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]])
    boltz = un.models.boltzmann(W=matrix, b=jnp.zeros(3))
    np.testing.assert_allclose(boltz.params["W"], [1.0, 2.0, 3.0])
    assert float(boltz.energy(boltz.params, jnp.ones(3))) == pytest.approx(-6.0)
    with pytest.raises(ValueError, match="couplings"):
        un.models.ising(J=jnp.ones(4), h=jnp.zeros(3))


def test_score_is_jittable_and_vmappable():
    model = make_functional()
    xs = jax.random.normal(jax.random.key(0), (5, 2))
    scores = jax.jit(jax.vmap(model.score, in_axes=(None, 0)))(model.params, xs)
    assert scores.shape == (5, 2)


def _centred_energy(params, x):
    return 0.5 * jnp.sum((x - params["mu"]) ** 2)


def _shifted_energy(params, x, *, shift):
    return 0.5 * jnp.sum((x - params["mu"] - shift) ** 2)


def test_models_built_alike_are_equal_and_share_compiled_programs():
    """Equal when built alike (same importable energy or partial of one with equal arguments,
    equal initial parameters, constraints, support and name); a model built again compiles
    nothing in a fit its twin already ran."""
    assert un.models.gaussian(2) == un.models.gaussian(2)
    assert hash(un.models.gaussian(2)) == hash(un.models.gaussian(2))
    assert un.models.ising_chain(5, coupling=0.2) == un.models.ising_chain(5, coupling=0.2)
    # anything that could change a compiled program or a result makes them differ
    assert un.models.gaussian(2) != un.models.gaussian(3)
    assert un.models.gaussian(2) != un.models.gaussian(2, mean=jnp.ones(2))
    assert un.models.ising_chain(5, coupling=0.2) != un.models.ising_chain(5, coupling=0.3)
    assert un.models.ising_chain(5) != un.models.ising_chain(5, periodic=True)

    def build(shift, support=None, name=None):
        return un.Model(functools.partial(_shifted_energy, shift=shift),
                        params={"mu": jnp.zeros(2)}, support=support or un.supports.real(2),
                        name=name)

    assert build(1.0) == build(1.0)
    assert build(1.0) != build(2.0)
    assert build(1.0) != build(1.0, support=un.supports.positive(2))
    assert build(1.0) != build(1.0, name="other")
    # another function, even one computing the same energy
    assert un.Model(_centred_energy, params={"mu": jnp.zeros(2)},
                    support=un.supports.real(2)) != build(0.0)
    # lambdas and closures are equal only through the very same function object: two of the
    # same code may read different globals or cells

    def closure_model(scale):
        def energy(params, x):
            return scale * jnp.sum((x - params["mu"]) ** 2)
        return un.Model(energy, params={"mu": jnp.zeros(2)}, support=un.supports.real(2))

    assert closure_model(1.0) != closure_model(1.0)
    same = lambda params, x: jnp.sum((x - params["mu"]) ** 2)  # noqa: E731
    assert (un.Model(same, params={"mu": jnp.zeros(2)}, support=un.supports.real(2))
            == un.Model(same, params={"mu": jnp.zeros(2)}, support=un.supports.real(2)))

    compiles = []

    def listener(event, duration, **kwargs):
        if event.endswith("backend_compile_duration"):
            compiles.append(event)

    x = np.random.default_rng(3).normal(size=(200, 2))
    first = un.fit(build(0.5), x, "sm", key=jax.random.key(0), progress_bar=False)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        again = un.fit(build(0.5), x, "sm", key=jax.random.key(0), progress_bar=False)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert not compiles, compiles
    np.testing.assert_array_equal(first.params["mu"], again.params["mu"])
    np.testing.assert_array_equal(first.stderr["mu"], again.stderr["mu"])
    # the other shift is another program, and another answer
    other = un.fit(build(1.5), x, "sm", key=jax.random.key(0), progress_bar=False)
    np.testing.assert_allclose(other.params["mu"], first.params["mu"] - 1.0, atol=1e-4)


def test_initial_values_outside_their_constraint_are_rejected():
    # NumPyro's constraints are checked in one compiled program (they are pytrees); a user's
    # Constraint subclass that is not a pytree is checked op by op
    from numpyro.distributions import constraints as numpyro_constraints

    class Below3(numpyro_constraints.Constraint):
        def __call__(self, x):
            return x < 3

    class Positive(numpyro_constraints.ParameterFreeConstraint):
        def __call__(self, x):
            return bool(x > 0)  # a Python branch on the value: not traceable

    class PositiveByNumPy(numpyro_constraints.ParameterFreeConstraint):
        def __call__(self, x):
            return np.all(np.asarray(x) > 0)  # NumPy on the value: not traceable

    def energy(params, x):
        return jnp.sum((x - params["a"]) ** 2) * jnp.sum(params["prec"])

    def build(a, prec):
        return un.Model(energy, params={"a": a, "prec": prec},
                        constraints={"a": Below3(), "prec": constraints.positive_definite},
                        support=un.supports.real(2))

    assert build(1.0, np.eye(2)).params["a"].shape == ()
    with pytest.raises(ValueError, match=r"params\['a'\] violates its constraint"):
        build(5.0, np.eye(2))
    with pytest.raises(ValueError, match=r"params\['prec'\] violates its constraint"):
        build(1.0, -np.eye(2))
    for untraceable in (Positive(), PositiveByNumPy()):
        single = {"support": un.supports.real(1), "constraints": {"a": untraceable}}
        assert un.Model(lambda params, x: params["a"] * jnp.sum(x**2), params={"a": 2.0},
                        **single).params["a"] == 2.0
        with pytest.raises(ValueError, match=r"params\['a'\] violates its constraint"):
            un.Model(lambda params, x: params["a"] * jnp.sum(x**2), params={"a": -2.0},
                     **single)
