"""Automatic ranks by empirical variational Bayesian matrix factorisation (EVBMF), the paper's named alternative.

Kim et al. (2016) pick the Tucker-2 ranks of a conv by applying EVBMF to the kernel's two channel-mode
unfoldings. EVBMF (Nakajima et al., 2013, "Global analytic solution of fully-observed variational Bayesian
matrix factorization") models an L x M matrix (L <= M) as low rank plus Gaussian noise of variance sigma^2,
estimates sigma^2 by minimising the free energy over a bounded interval, and keeps the singular values above
the analytic threshold sqrt(M sigma^2 (1 + tau)(1 + alpha / tau)), alpha = L / M, tau = 2.5129 sqrt(alpha).
Only the singular values are needed: the squared singular values of each unfolding are the row and column
sums of the engine's cached core energies (the eigenvalues of the two Gram matrices), so no SVD is run.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

from tuckerscope.core.compression.tucker import TuckerEngine

TAU_CONSTANT = (
    2.5129  # the root of the fixed-point equation of Nakajima et al. (2013) that sets the threshold
)


def evbmf_rank(squared_singular_values: np.ndarray, rows: int, cols: int) -> int:
    """How many components EVBMF keeps of a rows x cols matrix with these squared singular values."""
    s2 = np.sort(np.asarray(squared_singular_values, dtype=np.float64))[::-1]
    small, large = min(rows, cols), max(rows, cols)
    s2 = np.clip(s2[:small], 0.0, None)
    if s2.size == 0 or s2[0] <= 0.0:
        return 0
    alpha = small / large
    tau_bar = TAU_CONSTANT * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    # EVBMF keeps at most ceil(L / (1 + alpha)) - 1 components: the values from there on are surely noise
    first_noise = min(math.ceil(small / (1 + alpha)) - 1, small)
    upper = float(s2.sum()) / (small * large)
    lower = max(float(s2[first_noise]) / (large * x_bar), float(s2[first_noise:].mean()) / large)
    if not 0.0 < lower < upper:
        sigma2 = upper
    else:
        sigma2 = float(
            minimize_scalar(
                _free_energy, bounds=(lower, upper), args=(s2, large, alpha, x_bar), method="bounded"
            ).x
        )
    threshold = large * sigma2 * x_bar
    return int(np.count_nonzero(s2 > threshold))


def _free_energy(sigma2: float, s2: np.ndarray, large: int, alpha: float, x_bar: float) -> float:
    """EVBMF's free energy as a function of the noise variance, up to constants (all components kept: no
    residual and no (L - H) log sigma^2 term)."""
    x = s2 / (large * sigma2)
    signal = x > x_bar
    noise = np.maximum(x[~signal], np.finfo(float).tiny)
    z = x[signal]
    tau = 0.5 * (z - (1 + alpha) + np.sqrt((z - (1 + alpha)) ** 2 - 4 * alpha))
    return float(
        np.sum(noise - np.log(noise))
        + np.sum(z - tau)
        + np.sum(np.log((tau + 1) / z))
        + alpha * np.sum(np.log(tau / alpha + 1))
    )


def vbmf_ranks(engine: TuckerEngine, min_rank: int = 1) -> dict[str, tuple[int, int]]:
    """(r_out, r_in) of every layer: EVBMF on the C_out and the C_in unfolding, at least ``min_rank``."""
    ranks = {}
    for layer in engine.layers:
        energy = engine.factors(layer.name).energy.numpy()
        c_out, c_in = energy.shape
        other = layer.kernel_volume
        r_out = evbmf_rank(energy.sum(axis=1), c_out, c_in * other)
        r_in = evbmf_rank(energy.sum(axis=0), c_in, c_out * other)
        ranks[layer.name] = (
            min(c_out, max(r_out, min_rank)),
            min(c_in, max(r_in, min_rank)),
        )
    return ranks
