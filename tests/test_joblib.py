"""Replicate fits in joblib's worker processes, as simulation studies run them: the model
reaches each process by pickling (and closures by cloudpickle, through loky). In a file of its
own, so that its two fresh processes run beside the other test files."""

import jax
import joblib
import numpy as np

import unnorm as un


def _replicate_fit(model: un.Model, seed: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.random.default_rng(seed).normal(1.0, 1.0, size=(100, 2))
    fit = un.fit(model, data, "sm", key=jax.random.key(seed), stderr=False, progress_bar=False)
    return fit.params["mu"], data.mean(axis=0)


def test_replicate_fits_of_one_model_with_joblib():
    # how statisticians run simulation studies: joblib's worker processes (loky) receive the
    # model by pickling, and closures by cloudpickle
    model = un.models.gaussian(2)
    results = joblib.Parallel(n_jobs=2)(joblib.delayed(_replicate_fit)(model, seed)
                                        for seed in range(4))
    assert len(results) == 4
    for mu, mean in results:
        # score matching's Gaussian mean is the sample mean (closed form)
        np.testing.assert_allclose(mu, mean, atol=1e-5)
    assert not np.allclose(results[0][0], results[1][0])
