"""Kernels in the BlackJAX shape run inside a jitted loop while θ changes, without recompiling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unnorm as un
from unnorm.samplers import draws, gibbs, hmc, langevin, rwmh, structure


def gaussian_logdensity(theta):
    return lambda x: -0.5 * jnp.sum((x - theta) ** 2)


def make_loop(init, step, num_steps=200):
    @jax.jit
    def run(theta, key):
        logdensity_fn = gaussian_logdensity(theta)
        state = init(jnp.zeros(2), logdensity_fn)

        def body(state, key):
            state, info = step(key, state, logdensity_fn)
            return state, state.position

        _, positions = jax.lax.scan(body, state, jax.random.split(key, num_steps))
        return positions

    return run


@pytest.mark.parametrize(
    "init, step",
    [
        (langevin.init, lambda k, s, f: langevin.mala_step(k, s, f, 0.9)),
        (langevin.init, lambda k, s, f: langevin.ula_step(k, s, f, 0.3)),
        (rwmh.init, lambda k, s, f: rwmh.step(k, s, f, 1.0)),
    ],
    ids=["mala", "ula", "rwmh"],
)
def test_kernel_follows_changing_theta_without_recompiling(init, step):
    run = make_loop(init, step, num_steps=2000)
    first = run(jnp.array([0.0, 0.0]), jax.random.key(0))
    moved = run(jnp.array([3.0, -2.0]), jax.random.key(0))
    assert run._cache_size() == 1
    # The chain follows θ: means near (0, 0) and (3, -2); sd of a 1,500-draw mean of a chain with
    # autocorrelation time below ~20 is under 0.12, so 0.6 is a > 4-sigma margin.
    np.testing.assert_allclose(np.asarray(first[500:]).mean(0), [0.0, 0.0], atol=0.6)
    np.testing.assert_allclose(np.asarray(moved[500:]).mean(0), [3.0, -2.0], atol=0.6)


def test_numpyro_nuts_kernel_takes_the_logdensity_per_step():
    kernel = hmc.build("nuts", step_size=0.5, adapt_step_size=False, adapt_mass_matrix=False)

    @jax.jit
    def run(theta, key):
        logdensity_fn = gaussian_logdensity(theta)
        state = kernel.init(jnp.zeros(2), logdensity_fn, 0, key)

        def body(state, key):
            state, info = kernel.step(key, state, logdensity_fn)
            return state, (state.z, info.num_steps)

        return jax.lax.scan(body, state, jax.random.split(key, 300))[1]

    positions, num_steps = run(jnp.array([2.0, 1.0]), jax.random.key(1))
    run(jnp.array([-1.0, 0.0]), jax.random.key(1))
    assert run._cache_size() == 1
    assert np.all(np.asarray(num_steps) >= 1)
    np.testing.assert_allclose(np.asarray(positions[50:]).mean(0), [2.0, 1.0], atol=0.4)


def test_gibbs_kernel_on_independent_spins_matches_the_logistic_conditional():
    # Independent spins with fields h: P(x_i = +1) = σ(2 h_i); mean spin = tanh(h_i).
    fields = jnp.array([0.5, -1.0, 0.0])

    @jax.jit
    def run(h, key):
        logdensity_fn = lambda x: h @ x  # noqa: E731
        state = gibbs.init(jnp.ones(3), logdensity_fn)

        def body(state, key):
            state, info = gibbs.step(key, state, logdensity_fn, values=(-1.0, 1.0))
            return state, state.position

        return jax.lax.scan(body, state, jax.random.split(key, 4000))[1]

    draws = np.asarray(run(fields, jax.random.key(2)))
    run(-fields, jax.random.key(2))
    assert run._cache_size() == 1
    # Independent sweeps: sd of the mean <= 1/sqrt(4000) ≈ 0.016; 0.07 is > 4 sigma.
    np.testing.assert_allclose(draws.mean(0), np.tanh(np.asarray(fields)), atol=0.07)


def test_unconstrained_logdensity_includes_the_jacobian():
    # Exponential(1) on the positive support: with x = exp(u), log p(u) = -exp(u) + u.
    model = un.Model(lambda p, x: p["rate"] * jnp.sum(x), params={"rate": 1.0},
                     support=un.supports.positive(1))
    logdensity = un.samplers.unconstrained_logdensity(model, model.params)
    u = jnp.array([0.3])
    assert float(logdensity(u)) == pytest.approx(float(-jnp.exp(0.3) + 0.3), rel=1e-6)


@pytest.mark.parametrize("sampler", ["mala", "rwmh"])
def test_thinning_keeps_every_kth_step_of_the_same_stream(sampler):
    # Step keys are fold_in(chain_key, global step), so with no warmup a thinned run is exactly
    # every k-th draw of the unthinned one.
    model = un.models.gaussian(2)
    options = {"key": jax.random.key(5), "sampler": sampler, "num_chains": 2, "num_warmup": 0,
               "progress_bar": False, "warn": False}
    full = np.asarray(un.sample(model, model.params, num_samples=60, **options).posterior["x"])
    thinned = un.sample(model, model.params, num_samples=20, thinning=3, **options)
    np.testing.assert_array_equal(np.asarray(thinned.posterior["x"]), full[:, 2::3])
    assert thinned.posterior["x"].shape == (2, 20, 2)


# ---- the blocked (chromatic) Gibbs scan ----------------------------------------------------------


def _structure(energy, support, params=None):
    model = un.Model(energy, params=params or {"a": 1.0}, support=support)
    return structure.gibbs_structure(model, model.params, "blocked")


def _edges(adjacency) -> set[tuple[int, int]]:
    rows, cols = np.nonzero(np.triu(adjacency))
    return set(zip(rows.tolist(), cols.tolist(), strict=True))


@pytest.mark.parametrize("support", [un.supports.binary(7), un.supports.spin(7)],
                         ids=["binary", "spin"])
def test_interaction_graph_finds_pure_higher_order_terms(support):
    # Three- and four-way products and nothing pairwise: every pair inside a product interacts
    # (flipping x0 changes the energy by an amount that depends on x1 and x2), no other pair.
    def energy(p, x):
        return -p["a"] * x[0] * x[1] * x[2] + 0.5 * x[3] * x[4] * x[5] * x[6] - 0.3 * x[6]

    found = _structure(energy, support)
    assert found.blocks is not None and found.blocks.multilinear
    expected = {(0, 1), (0, 2), (1, 2)} | {(i, j) for i in range(3, 7) for j in range(i + 1, 7)}
    assert _edges(found.adjacency) == expected
    colors = found.blocks.colors
    assert sorted(sum(colors, ())) == list(range(7))  # every site exactly once
    for color in colors:  # no edge inside a colour
        assert not found.adjacency[np.ix_(color, color)].any()
    assert len(colors) == 4  # the clique {3, 4, 5, 6} needs four


def test_interaction_graph_of_a_non_multilinear_energy():
    # (x0 + x1)² = 2 + 2 x0 x1 on spins, written with a square: the Hessian diagonal is not
    # zero, so the flip differences are not taken from the gradient.
    found = _structure(lambda p, x: p["a"] * (x[0] + x[1]) ** 2 - jnp.sum(x[1:] * x[:-1] ** 2),
                       un.supports.spin(4))
    assert not found.blocks.multilinear
    assert _edges(found.adjacency) == {(0, 1), (1, 2), (2, 3)}


def test_interaction_graph_is_taken_at_the_given_parameters():
    # A coupling that is zero at θ does not couple: sites 0 and 2 fall into one colour.
    J = np.zeros((3, 3))
    J[0, 1] = J[1, 2] = 0.7
    model = un.models.ising(J=J, h=np.zeros(3))
    found = structure.gibbs_structure(model, model.params, "auto")
    assert _edges(found.adjacency) == {(0, 1), (1, 2)}
    assert found.blocks.colors == ((0, 2), (1,)) or found.blocks.colors == ((1,), (0, 2))


@pytest.mark.parametrize("energy, primitive", [
    (lambda p, x: p["a"] * jnp.abs(x[0] - x[1]), "abs"),
    (lambda p, x: jnp.where(x[0] > 0, p["a"] * x[1], 0.0), "gt"),
    (lambda p, x: p["a"] * jnp.max(x), "reduce_max"),
    (lambda p, x: jnp.sum(jax.nn.softplus(p["a"] * x)), "max"),
    (lambda p, x: p["a"] * jax.lax.stop_gradient(x[0]) * x[1], "stop_gradient"),
    (lambda p, x: p["a"] * x[x[0].astype(int)], "convert_element_type"),
], ids=["abs", "where", "max", "softplus", "stop_gradient", "index-by-x"])
def test_energies_that_cannot_be_certified_are_not_blocked(energy, primitive):
    # These hide interactions from the Hessian (|x0 - x1| has zero Hessian almost everywhere
    # but couples x0 and x1): they must fall back to the sequential scan.
    found = _structure(energy, un.supports.spin(3))
    assert found.blocks is None and primitive in found.reason
    model = un.Model(energy, params={"a": 1.0}, support=un.supports.spin(3))
    with pytest.raises(ValueError, match="scan='blocked' needs the interaction graph"):
        un.sample(model, key=jax.random.key(0), sampler="gibbs", scan="blocked",
                  progress_bar=False, warn=False)


def _two_pairs(p, x):
    return -p["a"] * x[0] * x[1] - p["b"] * x[2] * x[3]


def test_the_graph_of_a_fits_chains_holds_for_every_parameter_value():
    # Both couplings start at 0, where the graph at θ has no edge; the chains of a fit move
    # with θ, so their graph is taken at random θ: the two pairs, coloured apart
    model = un.Model(_two_pairs, params={"a": 0.0, "b": 0.0}, support=un.supports.spin(4))
    assert _edges(structure.gibbs_structure(model, model.params, "auto").adjacency) == set()
    found = structure.training_structure(model)
    assert _edges(found.adjacency) == {(0, 1), (2, 3)}
    assert found.blocks.multilinear and len(found.blocks.colors) == 2
    assert structure.training_structure(un.models.ising_chain(7, coupling=0.0)).blocks.colors \
        == ((1, 3, 5), (0, 2, 4, 6))
    # every coupling a parameter (a full J): every pair may couple, and a colour per site is
    # the sequential scan
    dense = un.models.ising(J=np.zeros((4, 4)), h=np.zeros(4))
    assert structure.training_structure(dense).blocks is None
    # a parameter entering through a function that is not analytic: the graph at random θ
    # could miss a region of θ where sites couple, so nothing is certified
    kinked = un.Model(lambda p, x: -jnp.abs(p["a"]) * x[0] * x[1], params={"a": 0.0},
                      support=un.supports.spin(3))
    found = structure.training_structure(kinked)
    assert found.blocks is None and "abs" in found.reason


def test_gibbs_scan_option_is_checked():
    model = un.models.ising_chain(4)
    with pytest.raises(ValueError, match="unknown scan 'chromatic'"):
        un.sample(model, key=jax.random.key(0), sampler="gibbs", scan="chromatic")


def test_greedy_coloring_is_proper_on_a_random_graph():
    rng = np.random.default_rng(0)
    upper = np.triu(rng.random((30, 30)) < 0.15, k=1)
    adjacency = upper | upper.T
    colors = structure.greedy_coloring(adjacency)
    assert sorted(sum(colors, ())) == list(range(30))
    for color in colors:
        assert not adjacency[np.ix_(color, color)].any()
    assert len(colors) <= adjacency.sum(1).max() + 1


def test_blocked_scan_with_one_site_per_colour_is_the_sequential_scan():
    # One site per colour in C order makes the blocked sweep the systematic scan, with the same
    # uniforms: the draws agree exactly, for a non-multilinear energy.
    def logdensity(x):
        return 0.4 * x[0] * x[1] * x[2] - 0.3 * (x[2] + x[3]) ** 2 + 0.2 * x[4] + 0.1 * x[0]

    colors = tuple((i,) for i in range(5))

    @jax.jit
    def run(key):
        state = gibbs.init(jnp.ones(5), logdensity)

        def body(states, key):
            seq, blk = states
            seq, _ = gibbs.step(key, seq, logdensity, values=(-1.0, 1.0))
            blk, _ = gibbs.blocked_step(key, blk, logdensity, colors, values=(-1.0, 1.0))
            return (seq, blk), (seq.position, blk.position)

        return jax.lax.scan(body, (state, state), jax.random.split(key, 300))[1]

    sequential, blocked = run(jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(sequential), np.asarray(blocked))
    assert len(np.unique(np.asarray(blocked), axis=0)) > 10  # the chain moves


def test_blocked_gibbs_kernel_follows_changing_theta_without_recompiling():
    # An open chain of 6 spins with coupling J and field h, two colours (even and odd sites);
    # θ = (J, h) changes between calls of the same compiled loop.
    colors = ((0, 2, 4), (1, 3, 5))

    @jax.jit
    def run(theta, key):
        def logdensity_fn(x):
            return theta[0] * jnp.sum(x[1:] * x[:-1]) + theta[1] * jnp.sum(x)

        state = gibbs.init(jnp.ones(6), logdensity_fn)

        def body(state, key):
            state, info = gibbs.blocked_step(key, state, logdensity_fn, colors,
                                             values=(-1.0, 1.0), multilinear=True)
            return state, state.position

        return jax.lax.scan(body, state, jax.random.split(key, 4000))[1]

    independent = np.asarray(run(jnp.array([0.0, 0.5]), jax.random.key(4)))
    coupled = np.asarray(run(jnp.array([0.8, 0.0]), jax.random.key(4)))
    assert run._cache_size() == 1
    # J = 0: independent spins, mean tanh(0.5) = 0.462; sd of a 4000-sweep mean <= 0.016.
    np.testing.assert_allclose(independent.mean(0), np.tanh(0.5), atol=0.07)
    # h = 0: neighbours correlate as tanh(J) = 0.664 in an open chain.
    nearest = (coupled[:, 1:] * coupled[:, :-1]).mean(0)
    np.testing.assert_allclose(nearest, np.tanh(0.8), atol=0.1)


def test_noise_and_uniform_from_one_draw_are_independent_normal_and_uniform():
    n = 40_000
    keys = jax.random.split(jax.random.key(5), n)
    noise, uniform = jax.vmap(lambda k: draws.noise_and_uniform(k, (3,), jnp.float32))(keys)
    noise, uniform = np.asarray(noise, dtype=float), np.asarray(uniform, dtype=float)
    assert np.all((uniform > 0) & (uniform < 1)) and np.all(np.isfinite(noise))
    se = 1 / np.sqrt(n)
    # N(0, 1): mean 0 (sd 1), variance 1 (sd √2), kurtosis 3 (sd √96); U(0, 1): mean ½ (sd √(1/12))
    np.testing.assert_array_less(np.abs(noise.mean(0)), 4 * se)
    np.testing.assert_array_less(np.abs(noise.var(0) - 1), 4 * np.sqrt(2) * se)
    np.testing.assert_array_less(np.abs((noise**4).mean(0) - 3), 4 * np.sqrt(96) * se)
    assert abs(uniform.mean() - 0.5) < 4 * np.sqrt(1 / 12) * se
    assert abs(np.mean(uniform < 0.1) - 0.1) < 4 * 0.3 * se
    # independent coordinates: correlations within 4 SE of 0
    corr = np.corrcoef(np.column_stack([noise, uniform]), rowvar=False)
    np.testing.assert_array_less(np.abs(corr[np.triu_indices(4, 1)]), 4 * se)
