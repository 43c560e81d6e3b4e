"""Estimators of θ for :func:`unnorm.fit`, by name or as configured instances.

=======  ==========================================  ==============================
name     class                                       needs
=======  ==========================================  ==============================
``sm``   :class:`SM` (score matching, eq. 8)         continuous support
``dsm``  :class:`DSM` (denoising SM, eq. 10-14)      real support
``ssm``  :class:`SSM` (sliced SM, eq. 15-17)         continuous support
``nce``  :class:`NCE` (noise contrastive, eq. 18-24)   any support
``ksd``  :class:`KSD` (kernel Stein disc., eq. 30)   real support
``mle``  :class:`MLE` (MCMC + Monte Carlo MLE, §3)  any support (a sampler for it)
``cd``   :class:`CD` (contrastive divergence, §3)    any support (a sampler for it)
``pcd``  :class:`PCD` (persistent CD, §3)            any support (a sampler for it)
``pl``   :class:`PseudoLikelihood` (Besag 1975)      binary or spin support
``rm``   :class:`RatioMatching` (Hyvärinen 2007)     binary or spin support
``mpf``  :class:`MPF` (Sohl-Dickstein et al. 2011)   binary or spin support
=======  ==========================================  ==============================
"""

from __future__ import annotations

from .base import Batch, Estimator, Objective, PostFit, Traits, objective_params
from .contrastive import CD, PCD
from .mle import MLE
from .mpf import MPF
from .nce import NCE
from .pseudolikelihood import PseudoLikelihood
from .ratio_matching import RatioMatching
from .score_matching import DSM, SM, SSM
from .stein import KSD

__all__ = ["Batch", "CD", "DSM", "Estimator", "KSD", "MLE", "MPF", "NCE", "Objective", "PCD",
           "PostFit", "PseudoLikelihood", "RatioMatching", "SM", "SSM", "Traits", "ESTIMATORS",
           "objective_params", "resolve"]

#: name -> estimator class; ``un.fit(..., estimator=name)`` uses the class's defaults
ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls
    for cls in (SM, DSM, SSM, NCE, KSD, MLE, CD, PCD, PseudoLikelihood, RatioMatching, MPF)}


def resolve(estimator, name: str = "estimator") -> Estimator:
    """An :class:`Estimator` from a name (``"sm"``) or an instance (``SM()``)."""
    if isinstance(estimator, Estimator):
        return estimator
    if isinstance(estimator, type) and issubclass(estimator, Estimator):
        return estimator()
    valid = ", ".join(repr(k) for k in ESTIMATORS)
    if isinstance(estimator, str):
        cls = ESTIMATORS.get(estimator.lower())
        if cls is None:
            raise ValueError(f"unknown {name} {estimator!r}; choose one of {valid}, or pass an "
                             "instance such as un.estimators.DSM(sigma=0.1).")
        return cls()
    raise TypeError(f"{name} must be a name ({valid}) or an instance such as "
                    f"un.estimators.SSM(num_projections=2); got {type(estimator).__name__}.")
