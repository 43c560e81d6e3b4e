r"""A 2-D Gaussian energy for the ``unnorm`` command line.

``E(x) = ½ (x − μ)ᵀ Λ (x − μ)`` with mean ``mu`` and precision ``prec`` to fit; the file is ordinary
Python, which the command line executes to find the object named after the colon:

    unnorm fit examples/gaussian_model.py:model examples/gaussian_data.csv --estimator sm
    unnorm sample examples/gaussian_model.py:model --sampler nuts
    unnorm compare examples/gaussian_model.py:model examples/gaussian_data.csv \
        --estimators sm,ssm,nce

Run:  python examples/gaussian_model.py   rewrites examples/gaussian_data.csv, the 500
observations those commands read (drawn with a fixed seed from the Gaussian with the mean
and precision printed below).
"""

import jax.numpy as jnp

import unnorm as un


@un.model(support=un.supports.real(2))
def model(x):
    mu = un.param("mu", jnp.zeros(2))
    prec = un.param("prec", jnp.eye(2), constraint=un.constraints.positive_definite)
    d = x - mu
    return 0.5 * d @ prec @ d


if __name__ == "__main__":
    import pathlib

    import numpy as np

    mean = np.array([1.0, -0.5])
    cov = np.array([[1.0, 0.6], [0.6, 2.0]])
    data = np.random.default_rng(20240501).multivariate_normal(mean, cov, size=500)
    path = pathlib.Path(__file__).with_name("gaussian_data.csv")
    np.savetxt(path, data, fmt="%.6f", delimiter=",", header="x0,x1", comments="")
    print(f"wrote {path}: 500 draws, mean {mean.tolist()}, precision "
          f"{np.round(np.linalg.inv(cov), 4).tolist()}")
