"""Tucker engine: each conv found once, exact at full rank, slices equal their rebuilt kernels, heatmaps and counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from ts_home import ts_results_folder
from tuckerscope.core.compression.conv_layers import (
    ConvLayer,
    conv_modules,
    find_conv_layers,
    meta_copy,
)
from tuckerscope.core.compression.counting import count_network
from tuckerscope.core.compression.explained_variance import (
    all_heatmaps,
    explained_variance,
    explained_variance_grid,
)
from tuckerscope.core.compression.ranks import df_ranks, ranks_of
from tuckerscope.core.compression.tucker import RankError, TuckerEngine, factorise_kernel, layer_kernel
from tuckerscope.core.compression.tucker_conv import TuckerConv
from tuckerscope.core.models.model_folder import build_network

# the smallest inputs that keep >1 voxel at the bottleneck (InstanceNorm needs it): 5 and 4 poolings
SMALL_INPUTS = {291: (1, 1, 64, 64, 64), 297: (1, 1, 32, 32, 32)}


def ts_network(task_id: int, seed: int = 0) -> nn.Module:
    folder = ts_results_folder(task_id)
    plans = json.loads((folder / "plans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    torch.manual_seed(seed)
    return build_network(plans, dataset_json).eval()


@pytest.fixture(scope="module", params=[291, 297], ids=["organs_1.5mm", "total_3mm"])
def ts_engine(request: pytest.FixtureRequest) -> TuckerEngine:
    engine = TuckerEngine(ts_network(request.param), SMALL_INPUTS[request.param])
    engine.factorise()
    return engine


def full_ranks(engine: TuckerEngine) -> dict[str, tuple[int, int]]:
    return {layer.name: (layer.out_channels, layer.in_channels) for layer in engine.layers}


def test_every_conv_found_once_with_both_slots(ts_engine: TuckerEngine) -> None:
    network = ts_engine.network
    unique = {id(m) for m in network.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))}
    layers = find_conv_layers(network)
    assert len(layers) == len(unique)
    block = network.encoder.stages[0][0].convs[0]
    layer = next(layer for layer in layers if layer.name.startswith("encoder.stages.0.0.convs.0"))
    assert layer.slots == ("encoder.stages.0.0.convs.0.conv", "encoder.stages.0.0.convs.0.all_modules.0")
    assert block.conv is block.all_modules[0]
    # deep-supervision heads do not run with deep supervision off, so the engine leaves them alone
    assert [n for n in ts_engine.layer_names if "seg_layers" in n] == [layers[-1].name]


def test_full_rank_reproduces_logits(ts_engine: TuckerEngine) -> None:
    compressed = ts_engine.compress(full_ranks(ts_engine), keep_full_rank=False)
    block = compressed.encoder.stages[0][0].convs[1]
    assert isinstance(block.conv, TuckerConv) and block.conv is block.all_modules[0]
    assert sum(isinstance(m, TuckerConv) for m in compressed.modules()) == len(ts_engine.layers)
    torch.manual_seed(1)
    x = torch.randn(ts_engine.input_shape)
    with torch.inference_mode():
        reference = ts_engine.network(x)
        output = compressed(x)
    logit_range = float(reference.max() - reference.min())
    assert float((output - reference).abs().max()) <= 1e-4 * logit_range


def test_compress_leaves_original_untouched_and_shares_other_tensors(ts_engine: TuckerEngine) -> None:
    before = {k: v.clone() for k, v in ts_engine.network.state_dict().items()}
    ranks = ranks_of(df_ranks(ts_engine.layers, 0.3))
    compressed = ts_engine.compress(ranks)
    for key, value in ts_engine.network.state_dict().items():
        assert torch.equal(value, before[key])
    original_norm = ts_engine.network.encoder.stages[0][0].convs[0].norm
    assert compressed.encoder.stages[0][0].convs[0].norm.weight is original_norm.weight
    assert isinstance(ts_engine.network.encoder.stages[0][0].convs[1].conv, nn.Conv3d)


def test_unknown_layer_and_bad_ranks_are_refused(ts_engine: TuckerEngine) -> None:
    with pytest.raises(RankError, match="no compressible conv layer"):
        ts_engine.compress({"encoder.nope": (8, 8)})
    name = ts_engine.layers[1].name
    with pytest.raises(RankError, match="do not fit"):
        ts_engine.compress({name: (10_000, 8)})


def conv_layer_of(module: nn.Module) -> ConvLayer:
    return find_conv_layers(nn.Sequential(module))[0]


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv3d(24, 40, 3, stride=2, padding=1, bias=True),
        nn.Conv3d(12, 20, (1, 3, 3), padding=(0, 1, 1), dilation=(1, 2, 2), bias=False),
        nn.ConvTranspose3d(40, 24, 2, stride=2, bias=True),
        nn.ConvTranspose3d(16, 12, 3, stride=2, padding=1, output_padding=1, bias=True),
        nn.Conv3d(32, 50, 1, bias=True),
    ],
    ids=["conv_stride", "conv_aniso_dilated", "transposed_k2", "transposed_k3_outpad", "pointwise"],
)
def test_tucker_conv_equals_its_rebuilt_kernel(module: nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    layer = conv_layer_of(module)
    factors = factorise_kernel(layer_kernel(module))
    x = torch.randn(2, layer.in_channels, 6, 7, 8)
    # at full rank the rebuilt kernel is the original kernel
    assert torch.allclose(factors.kernel(), layer_kernel(module), atol=1e-4)
    engine = TuckerEngine(nn.Sequential(module))
    engine.factorise()
    for r_out, r_in in [(layer.out_channels, layer.in_channels), (5, 7), (1, 1)]:
        compressed = engine.compress({layer.name: (r_out, r_in)}, keep_full_rank=False)[0]
        assert isinstance(compressed, TuckerConv) and compressed.ranks == (r_out, r_in)
        kernel = factors.kernel(r_out, r_in)
        bias = module.bias
        if layer.transposed:
            expected = F.conv_transpose3d(
                x, kernel.transpose(0, 1), bias, module.stride, module.padding, module.output_padding
            )
        else:
            expected = F.conv3d(x, kernel, bias, module.stride, module.padding, module.dilation)
        with torch.no_grad():
            got = compressed(x)
            expected = expected.detach()
        scale = float(expected.abs().max())
        assert float((got - expected).abs().max()) <= 1e-5 * scale
        if layer.has_bias:
            assert torch.equal(compressed.bias, module.bias.detach())


def test_channels_last_input_gives_the_same_output() -> None:
    torch.manual_seed(0)
    module = nn.Conv3d(16, 24, 3, padding=1)
    engine = TuckerEngine(nn.Sequential(module))
    compressed = engine.compress({engine.layer_names[0]: (8, 6)})[0]
    x = torch.randn(1, 16, 5, 6, 7)
    with torch.no_grad():
        expected = compressed(x)
        got = compressed(x.contiguous(memory_format=torch.channels_last_3d))
    assert torch.allclose(got, expected, atol=1e-5)


def test_heatmap_matches_direct_reconstruction(ts_engine: TuckerEngine) -> None:
    rng = np.random.default_rng(0)
    for layer in ts_engine.layers[::6]:
        factors = ts_engine.factors(layer.name)
        grid = explained_variance_grid(factors)
        assert grid.shape == (layer.out_channels, layer.in_channels)
        assert np.all(np.diff(grid, axis=0) >= -1e-9) and np.all(np.diff(grid, axis=1) >= -1e-9)
        assert grid[-1, -1] == pytest.approx(1.0, abs=1e-5)
        weight = layer_kernel(conv_modules(ts_engine.network)[layer.name]).double()
        for _ in range(3):
            r_out = int(rng.integers(1, layer.out_channels + 1))
            r_in = int(rng.integers(1, layer.in_channels + 1))
            rebuilt = factors.kernel(r_out, r_in).double()
            direct = 1.0 - float((weight - rebuilt).square().sum() / weight.square().sum())
            assert grid[r_out - 1, r_in - 1] == pytest.approx(direct, abs=1e-5)
            assert explained_variance(factors, r_out, r_in) == pytest.approx(direct, abs=1e-5)
    assert set(all_heatmaps(ts_engine)) == set(ts_engine.layer_names)


PLANS_PATCHES = {291: (1, 1, 128, 128, 128), 297: (1, 1, 112, 112, 128)}


@pytest.mark.parametrize("df", [None, 0.3, 0.05])
def test_counts_match_torch_flop_counter_on_the_plans_patch(
    ts_engine: TuckerEngine, df: float | None
) -> None:
    """Counted on meta tensors at the full plans' patch: no arithmetic runs, the counter sees every product."""
    network = ts_engine.network
    task_id = 291 if len(ts_engine.layers) > 25 else 297
    patch = PLANS_PATCHES[task_id]
    ranks = ranks_of(df_ranks(ts_engine.layers, df)) if df else None
    compressed = ts_engine.compress(ranks, fuse_norm=False) if ranks else network
    for module in compressed.modules():
        if isinstance(module, TuckerConv):
            module.runs_dense = False  # run every layer as the paper's three convs, as counted
    cost = count_network(ts_engine, ranks, patch)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_copy(compressed)(torch.empty(patch, device="meta"))
    assert cost.conv_flops == counter.get_total_flops() // 2  # torch counts convs only, a multiply-add as two
    unused_heads = sum(
        p.numel()
        for name, module in conv_modules(network).items()
        if name not in ts_engine.layer_names
        for p in module.parameters()
    )
    assert unused_heads > 0  # the deep-supervision heads exist but are not counted
    assert cost.params == sum(p.numel() for p in compressed.parameters()) - unused_heads
    if df:
        assert cost.flops < count_network(ts_engine, None, patch).flops


def demo_model_folders() -> list:
    from tuckerscope.core.models.model_folder import find_result_folders
    from tuckerscope.resources import DEMO_MODELS_DIR

    return find_result_folders(DEMO_MODELS_DIR) if DEMO_MODELS_DIR.is_dir() else []


@pytest.mark.parametrize(
    "folder", demo_model_folders() or [None], ids=lambda f: f.parent.name if f else "none"
)
def test_full_rank_reproduces_demo_model_logits(folder) -> None:
    if folder is None:
        pytest.skip("no demo models in resources/demo_models yet")
    from tuckerscope.core.models.model_folder import load_expert, spec_from_folder

    expert = load_expert(spec_from_folder(folder))
    # a small input is enough (and quick): 4 voxels per axis at the bottleneck
    total_stride = np.ones(3, dtype=int)
    for layer in find_conv_layers(expert.network):
        if not layer.transposed:
            total_stride *= np.array(layer.stride)
    engine = TuckerEngine(expert.network, (1, 1, *(int(s) for s in 4 * total_stride)))
    compressed = engine.compress(full_ranks(engine), keep_full_rank=False)
    torch.manual_seed(2)
    x = torch.randn(engine.input_shape)
    with torch.inference_mode():
        reference = expert.network(x)
        output = compressed(x)
    assert float((output - reference).abs().max()) <= 1e-4 * float(reference.max() - reference.min())
