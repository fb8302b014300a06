"""How much each layer's lost kernel energy changes the network's output, measured on a calibration patch.

A budget that keeps the most explained variance treats every layer alike; but losing a tenth of the energy of
a high-resolution 16-channel layer can wreck the output while a deep layer barely matters. Per layer this
compresses that layer alone (at the DF-rule ranks of ``probe_df``), runs the calibration patch, and divides
the relative squared change of the logits by the energy the layer lost: the output damage per unit of lost
energy. As budget weights (BudgetPlanner(weights=...)) the solver then minimises the first-order predicted
damage sum_l s_l (1 - EV_l) instead of the mean lost energy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tuckerscope.core.compression.explained_variance import explained_variance
from tuckerscope.core.compression.ranks import df_rank
from tuckerscope.core.compression.tucker import TuckerEngine


@torch.inference_mode()
def layer_sensitivities(
    engine: TuckerEngine,
    calibration: torch.Tensor,
    probe_df: float = 0.5,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, float]:
    """Output change per unit of lost energy for every layer, scaled so that their mean is 1.

    ``calibration`` is one input batch (N, C, D, H, W) the network can run. A layer the probe leaves at full
    rank (nothing lost) gets the mean of the others.
    """
    network = engine.network.eval()
    reference = network(calibration).float()
    scale = float(reference.square().sum()) or 1.0
    raw: dict[str, float] = {}
    for index, layer in enumerate(engine.layers):
        probe = (df_rank(layer.out_channels, probe_df), df_rank(layer.in_channels, probe_df))
        lost = 1.0 - explained_variance(engine.factors(layer.name), *probe)
        if lost > 1e-9:
            output = engine.compress({layer.name: probe}).eval()(calibration).float()
            raw[layer.name] = float((output - reference).square().sum()) / scale / lost
        if progress is not None:
            progress(index + 1, len(engine.layers), layer.name)
    mean = sum(raw.values()) / len(raw) if raw else 1.0
    mean = mean if mean > 0 else 1.0
    return {layer.name: raw.get(layer.name, mean) / mean for layer in engine.layers}
