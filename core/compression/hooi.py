"""HOOI refinement of chosen ranks (tensorly's partial_tucker): the paper's reference decomposition.

The engine's sliced HOSVD is instant; HOOI iterates to a slightly better fit for one specific (r_out, r_in)
and takes seconds per layer, so it runs off the hot path (a worker, or `bench recompress --reference`).
The factors it returns are flagged method='hooi' and can be passed to TuckerEngine.compress(refined=...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import partial_tucker

from tuckerscope.core.compression.conv_layers import conv_modules
from tuckerscope.core.compression.tucker import (
    LayerFactors,
    TuckerEngine,
    layer_kernel,
    single_threaded_linear_algebra,
)
from tuckerscope.core.runtime.errors import Cancelled


def hooi_factors(
    kernel: torch.Tensor, r_out: int, r_in: int, n_iter_max: int = 100, tol: float = 1e-4
) -> LayerFactors:
    """partial_tucker on the two channel modes of a layer-terms kernel (C_out x C_in x k...)."""
    tl.set_backend("numpy")
    weight = kernel.detach().to(torch.float32).numpy()
    (core, (u_out, u_in)), _ = partial_tucker(
        weight, rank=[r_out, r_in], modes=[0, 1], n_iter_max=n_iter_max, tol=tol, init="svd"
    )
    core_t = torch.from_numpy(np.ascontiguousarray(core, dtype=np.float32))
    return LayerFactors(
        u_out=torch.from_numpy(np.ascontiguousarray(u_out, dtype=np.float32)),
        u_in_t=torch.from_numpy(np.ascontiguousarray(u_in.T, dtype=np.float32)),
        core=core_t,
        energy=core_t.reshape(r_out, r_in, -1).double().square().sum(-1),
        norm_sq=float(np.square(weight, dtype=np.float64).sum()),
        method="hooi",
    )


def refine_with_hooi(
    engine: TuckerEngine,
    ranks: Mapping[str, tuple[int, int]],
    progress: Callable[[int, int, str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, LayerFactors]:
    """HOOI factors for every layer in ``ranks`` below full rank, for TuckerEngine.compress(refined=...)."""
    modules = conv_modules(engine.network)
    todo = [
        (name, r)
        for name, r in ranks.items()
        if r != (engine.layer(name).out_channels, engine.layer(name).in_channels)
    ]
    refined: dict[str, LayerFactors] = {}
    with single_threaded_linear_algebra():
        for index, (name, (r_out, r_in)) in enumerate(todo):
            if should_cancel is not None and should_cancel():
                raise Cancelled("HOOI refinement cancelled")
            refined[name] = hooi_factors(layer_kernel(modules[name]), r_out, r_in)
            if progress is not None:
                progress(index + 1, len(todo), name)
    return refined
