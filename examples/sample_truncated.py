"""Sample a truncated, non-Gaussian energy on a box with every continuous sampler.

The energy E(x) = x₁⁴/4 + x₂²/2 − x₁x₂ lives on the interval support [-2, 2]²; the samplers run in
the unconstrained space of NumPyro's bijection and return draws inside the box.

Run:  python examples/sample_truncated.py
"""

import arviz as az
import jax

import unnorm as un


@un.model(support=un.supports.interval(-2.0, 2.0, 2))
def quartic(x):
    coupling = un.param("coupling", 1.0)
    return 0.25 * x[0] ** 4 + 0.5 * x[1] ** 2 - coupling * x[0] * x[1]


if __name__ == "__main__":
    for sampler in ("nuts", "mala", "rwmh"):
        idata = un.sample(quartic, quartic.params, key=jax.random.key(0), sampler=sampler,
                          num_chains=4, num_warmup=500, num_samples=1000,
                          thinning=1 if sampler == "nuts" else 5)
        print(f"--- {sampler}")
        print(az.summary(idata, var_names=["x"]))
