"""Gibbs sampling of an Ising model, checked against exact enumeration.

A 12-spin Ising model with random couplings: Gibbs marginals E[x_i] against the exact values from
all 2^12 configurations, and the exact log Z.

Run:  python examples/ising_gibbs.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import unnorm as un

if __name__ == "__main__":
    d = 12
    rng = np.random.default_rng(0)
    model = un.models.ising(J=rng.normal(scale=0.3, size=d * (d - 1) // 2),
                            h=rng.normal(scale=0.2, size=d))
    idata = un.sample(model, model.params, key=jax.random.key(1), sampler="gibbs",
                      num_chains=4, num_warmup=500, num_samples=2000)
    gibbs_means = np.asarray(idata.posterior["x"]).reshape(-1, d).mean(0)

    configs = model.support.enumerate()
    energies = jax.vmap(lambda x: model.energy(model.params, x))(configs)
    weights = jax.nn.softmax(-energies)
    exact_means = np.asarray(weights @ configs)
    print("coordinate  gibbs   exact")
    for i in range(d):
        print(f"{i:>10}  {gibbs_means[i]:+.3f}  {exact_means[i]:+.3f}")
    print("log Z =", un.log_partition(model, model.params).estimate)
    print("max |difference| =", float(np.max(np.abs(gibbs_means - exact_means))))
    assert jnp.isfinite(energies).all()
