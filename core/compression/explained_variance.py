"""Explained variance of every (r_out, r_in) truncation of a layer, read from its cached factors.

EV(r_out, r_in) = 1 - ||W - W_hat||^2 / ||W||^2. With orthonormal sorted bases, W_hat is the orthogonal
projection of W, so ||W - W_hat||^2 = ||W||^2 - ||G[:r_out, :r_in]||^2 and EV is the energy of the core's
leading block over ||W||^2: a 2D cumulative sum of per-(i, j) core energies gives the whole heatmap at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tuckerscope.core.compression.tucker import LayerFactors, TuckerEngine


def explained_variance_grid(factors: LayerFactors) -> np.ndarray:
    """grid[r_out - 1, r_in - 1] = EV at ranks (r_out, r_in), over every rank pair of the layer."""
    energy = factors.energy.numpy()
    cumulative = energy.cumsum(axis=0).cumsum(axis=1)
    if factors.norm_sq <= 0.0:
        return np.ones_like(cumulative)
    return np.clip(cumulative / factors.norm_sq, 0.0, 1.0)


def explained_variance(factors: LayerFactors, r_out: int, r_in: int) -> float:
    """EV of one truncation, without building the grid."""
    if factors.norm_sq <= 0.0:
        return 1.0
    return min(1.0, float(factors.energy[:r_out, :r_in].sum()) / factors.norm_sq)


def all_heatmaps(
    engine: TuckerEngine, progress: Callable[[int, int, str], None] | None = None
) -> dict[str, np.ndarray]:
    """The explained-variance grid of every layer of the engine's network, by layer name."""
    grids = {}
    for index, name in enumerate(engine.layer_names):
        grids[name] = explained_variance_grid(engine.factors(name))
        if progress is not None:
            progress(index + 1, len(engine.layer_names), name)
    return grids
