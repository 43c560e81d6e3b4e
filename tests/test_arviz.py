"""What un.sample returns works with ArviZ, under whichever ArviZ line is installed."""

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
import xarray.testing as xr_testing

import unnorm as un
from unnorm import _compat

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def idata():
    model = un.models.gaussian(2, precision=jnp.array([[2.0, -1.0], [-1.0, 2.0]]))
    return un.sample(model, model.params, key=jax.random.key(0), sampler="nuts", num_chains=4,
                     num_warmup=200, num_samples=300, progress_bar=False)


def test_returns_the_installed_arviz_container(idata):
    if _compat.ARVIZ_MAJOR >= 1:
        import xarray as xr

        assert isinstance(idata, xr.DataTree)
    else:
        assert isinstance(idata, az.InferenceData)


def test_posterior_and_sample_stats_layout(idata):
    x = idata.posterior["x"]
    assert x.dims == ("chain", "draw", "x_dim_0")
    assert x.shape == (4, 300, 2)
    stats = set(idata.sample_stats.data_vars)
    assert {"lp", "acceptance_rate", "diverging", "step_size", "tree_depth", "n_steps",
            "energy"} <= stats
    assert idata.sample_stats["diverging"].dtype == bool
    assert idata.sample_stats["lp"].dims == ("chain", "draw")


def test_summary_rhat_ess(idata):
    summary = az.summary(idata)
    assert list(summary.index) == ["x[0]", "x[1]"]
    assert {"ess_bulk", "r_hat"} <= set(summary.columns)
    rhat = np.asarray(az.rhat(idata)["x"])
    ess = np.asarray(az.ess(idata)["x"])
    assert rhat.shape == (2,) and np.all(rhat < 1.05)
    assert ess.shape == (2,) and np.all(ess > 100)


def test_plot_trace(idata):
    import matplotlib.pyplot as plt

    az.plot_trace(idata)
    plt.close("all")


def test_netcdf_round_trip(idata, tmp_path):
    path = tmp_path / "draws.nc"
    un.to_netcdf(idata, path)
    loaded = un.from_netcdf(path)
    assert _compat.is_inference_data(loaded)
    np.testing.assert_array_equal(np.asarray(loaded.posterior["x"]),
                                  np.asarray(idata.posterior["x"]))
    np.testing.assert_array_equal(np.asarray(loaded.sample_stats["diverging"]),
                                  np.asarray(idata.sample_stats["diverging"]))
    assert loaded.posterior.attrs["sampler"] == "nuts"


def _groups(idata):
    return {name: idata[name] if _compat.ARVIZ_MAJOR < 1 else idata[name].to_dataset()
            for name in ("posterior", "sample_stats")}


def _without_attrs(dataset):
    dataset = dataset.copy()
    dataset.attrs = {}
    return dataset


def test_inference_data_matches_what_arviz_from_dict_builds():
    # unnorm builds the datasets itself (faster); they must be what az.from_dict gives.
    rng = np.random.default_rng(0)
    posterior = {"x": rng.normal(size=(3, 5, 2, 4)).astype(np.float32)}
    stats = {"lp": rng.normal(size=(3, 5)), "diverging": rng.random((3, 5)) < 0.5,
             "tree_depth": rng.integers(0, 5, size=(3, 5))}
    ours = _compat.to_inference_data(posterior, stats, attrs={"sampler": "nuts"})
    data = {"posterior": posterior, "sample_stats": stats}
    theirs = az.from_dict(data) if _compat.ARVIZ_MAJOR >= 1 else az.from_dict(**data)
    assert type(ours) is type(theirs)
    for name, dataset in _groups(ours).items():
        reference = _groups(theirs)[name]
        assert set(dataset.attrs) == set(reference.attrs) | {"sampler"}
        xr_testing.assert_identical(_without_attrs(dataset), _without_attrs(reference))
        assert dataset.attrs["sampler"] == "nuts"


def test_inference_data_rejects_variables_of_other_chain_draw_shapes():
    with pytest.raises(ValueError, match=r"lp has shape \(3, 4\); every variable of a group "
                                         r"needs the \(chain, draw\) shape \(3, 5\)"):
        _compat.to_inference_data({"x": np.zeros((3, 5, 2))},
                                  {"acceptance_rate": np.zeros((3, 5)), "lp": np.zeros((3, 4))})


def test_gibbs_output_on_a_multidimensional_support():
    model = un.Model(lambda p, x: -p["J"] * jnp.sum(x[:, :-1] * x[:, 1:]),
                     params={"J": jnp.asarray(0.2)}, support=un.supports.spin((2, 3)))
    idata = un.sample(model, model.params, key=jax.random.key(1), sampler="gibbs",
                      num_chains=4, num_warmup=50, num_samples=200, progress_bar=False)
    assert idata.posterior["x"].dims == ("chain", "draw", "x_dim_0", "x_dim_1")
    assert idata.posterior["x"].shape == (4, 200, 2, 3)
    assert set(np.unique(np.asarray(idata.posterior["x"]))) <= {-1, 1}
    assert "flip_rate" in idata.sample_stats.data_vars
    summary = az.summary(idata, kind="diagnostics")
    assert len(summary) == 6


def test_discrete_draws_are_integers_with_named_dims_and_coords(tmp_path):
    """Spins come back as int32 (ArviZ treats them as discrete values), the event dims take the
    names and labels given, and both survive a NetCDF round trip."""
    model = un.Model(lambda p, x: -p["J"] * jnp.sum(x[:, :-1] * x[:, 1:]),
                     params={"J": jnp.asarray(0.2)}, support=un.supports.spin((2, 3)))
    idata = un.sample(model, model.params, key=jax.random.key(1), sampler="gibbs",
                      num_chains=2, num_warmup=20, num_samples=50, progress_bar=False,
                      warn=False, dims=["row", "site"], coords={"row": ["top", "bottom"]})
    x = idata.posterior["x"]
    assert x.dtype == np.int32 and x.dims == ("chain", "draw", "row", "site")
    assert list(x.coords["row"].values) == ["top", "bottom"]
    assert list(x.coords["site"].values) == [0, 1, 2]
    assert set(np.unique(np.asarray(x))) <= {-1, 1}
    # the same draws as without names: only the container changed
    plain = un.sample(model, model.params, key=jax.random.key(1), sampler="gibbs",
                      num_chains=2, num_warmup=20, num_samples=50, progress_bar=False,
                      warn=False)
    np.testing.assert_array_equal(np.asarray(plain.posterior["x"]), np.asarray(x))
    path = tmp_path / "spins.nc"
    un.to_netcdf(idata, path)
    back = un.from_netcdf(path).posterior["x"]
    assert back.dtype == np.int32 and back.dims == x.dims
    assert list(back.coords["row"].values) == ["top", "bottom"]


@pytest.mark.parametrize("dims, coords, error, match", [
    (["a"], None, ValueError, r"name each of the 2 axes of the model's event shape \(2, 3\)"),
    (["a", "a"], None, ValueError, "once"),
    ("ab", None, TypeError, "list of dimension names"),
    (["chain", "b"], None, ValueError, "may not use 'chain' or 'draw'"),
    (["a", "b"], {"c": [0, 1]}, ValueError, "names the dimension 'c'"),
    (["a", "b"], {"b": [0, 1]}, ValueError, r"coords\['b'\] must hold 3 labels"),
    (None, {"x_dim_1": [0, 1, 2]}, None, None),
])
def test_bad_dims_and_coords_are_refused_before_sampling(dims, coords, error, match):
    model = un.Model(lambda p, x: -p["J"] * jnp.sum(x[:, :-1] * x[:, 1:]),
                     params={"J": jnp.asarray(0.2)}, support=un.supports.spin((2, 3)))
    if error is None:
        from unnorm.samplers.run import _check_dims
        assert _check_dims(model, dims, coords)[1]["x_dim_1"].tolist() == [0, 1, 2]
        return
    with pytest.raises(error, match=match):
        un.sample(model, model.params, key=jax.random.key(0), sampler="gibbs", dims=dims,
                  coords=coords, progress_bar=False)


def test_convergence_warnings_fire_for_bad_chains():
    # Chains stuck in two different places: R-hat far above 1.01.
    draws = np.concatenate([np.zeros((2, 200, 1)), np.ones((2, 200, 1))], axis=0)
    draws += np.random.default_rng(0).normal(scale=0.01, size=draws.shape)
    problems = un.diagnostics.convergence_problems(draws, np.zeros((4, 200), bool))
    assert any("R-hat" in p for p in problems)
    diverging = np.zeros((4, 5000), bool)
    diverging[0, :3] = True
    # Long iid chains: R-hat within 1.01 and ESS far above 100 per chain, so only the
    # divergences are reported.
    problems = un.diagnostics.convergence_problems(
        np.random.default_rng(1).normal(size=(4, 5000, 1)), diverging)
    assert problems == ["There were 3 divergences after warmup (0.0% of draws). Increase "
                        "target_accept or reparameterize."]


def test_sample_warns_on_too_few_draws():
    model = un.models.gaussian(2)
    with pytest.warns(un.ConvergenceWarning, match="effective sample size per chain"):
        un.sample(model, model.params, key=jax.random.key(2), sampler="rwmh", num_chains=2,
                  num_warmup=10, num_samples=30, progress_bar=False)
