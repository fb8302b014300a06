"""Rank policies, fused norm, compressed model folders, pruning baseline, HOOI, timing and the compress/bench CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_model import tiny_plans, write_tiny_model
from tuckerscope.core.cli.main import main
from tuckerscope.core.compression.counting import count_network
from tuckerscope.core.compression.explained_variance import explained_variance, explained_variance_grid
from tuckerscope.core.compression.fused_norm import TuckerConvNormAct
from tuckerscope.core.compression.hooi import refine_with_hooi
from tuckerscope.core.compression.pruning import kept_conv_params, prunable_layers, prune, prune_to_match
from tuckerscope.core.compression.ranks import (
    RankPolicyError,
    df_rank,
    df_ranks,
    explained_variance_ranks,
    parse_df_options,
    parse_layer_override,
    ranks_of,
    round_up_rank,
    with_overrides,
)
from tuckerscope.core.compression.tucker import RankError, TuckerEngine, with_plain_convs
from tuckerscope.core.compression.tucker_conv import TuckerConv
from tuckerscope.core.evaluation.timing import ForwardSetup, TimingSetupError, compare_forward
from tuckerscope.core.models.compressed_model import MANIFEST_NAME, CompressedModelError, save_compressed
from tuckerscope.core.models.model_folder import load_expert, read_checkpoint, spec_from_folder
from tuckerscope.core.segmentation.expert_run import expert_engine

FEATURES = (16, 32, 48)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), plans=tiny_plans(FEATURES))


@pytest.fixture(scope="module")
def engine(model_folder: Path) -> TuckerEngine:
    expert = load_expert(spec_from_folder(model_folder))
    engine = expert_engine(expert, factorise=False)
    engine.factorise()
    return engine


def test_df_rule_edges() -> None:
    assert df_rank(32, 0.3) == 10  # ceil(9.6)
    assert df_rank(30, 0.1) == 8  # at least 8
    assert df_rank(1, 0.3) == 1 and df_rank(5, 0.05) == 5  # at most C
    assert df_rank(320, 1.0) == 320 and df_rank(100, 0.3) == 30  # exact products are not rounded up
    assert (
        round_up_rank(10, 32, 16) == 16 and round_up_rank(20, 24, 16) == 24 and round_up_rank(16, 64, 8) == 16
    )
    for bad in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(RankPolicyError):
            df_rank(32, bad)


def test_rounding_keeps_the_df_rule_visible(engine: TuckerEngine) -> None:
    plain = df_ranks(engine.layers, 0.3)
    rounded = df_ranks(engine.layers, 0.3, round_to=16)
    for name, choice in rounded.items():
        assert choice.df_rule == plain[name].ranks
        assert choice.r_out % 16 == 0 or choice.r_out == engine.layer(name).out_channels
        assert choice.r_out >= plain[name].r_out and choice.r_in >= plain[name].r_in
        assert "multiple of 16" in choice.source


def test_overrides_and_option_parsing(engine: TuckerEngine) -> None:
    name = engine.layer_names[2]
    assert parse_layer_override(f" {name} = 5,7 ") == (name, (5, 7))
    with pytest.raises(RankPolicyError, match="NAME=R_OUT,R_IN"):
        parse_layer_override("decoder=5")
    choices = with_overrides(df_ranks(engine.layers, 0.5), {name: (5, 7)}, engine.layers)
    assert choices[name].ranks == (5, 7) and choices[name].source == "override"
    with pytest.raises(RankPolicyError, match="no such"):
        with_overrides({}, {"nope": (1, 1)}, engine.layers)
    with pytest.raises(RankPolicyError, match="within"):
        with_overrides({}, {name: (0, 7)}, engine.layers)
    assert parse_df_options(["0.3", "b=0.5"], ["a", "b"]) == {"a": 0.3, "b": 0.5}
    assert parse_df_options(["b=0.5"], ["a", "b"]) == {"b": 0.5}
    with pytest.raises(RankPolicyError, match="no expert"):
        parse_df_options(["c=0.5"], ["a", "b"])
    with pytest.raises(RankPolicyError, match="number"):
        parse_df_options(["a=x"], ["a"])


def test_explained_variance_ranks_are_the_cheapest_reaching_the_threshold(engine: TuckerEngine) -> None:
    choices = explained_variance_ranks(engine, 0.8)
    for layer in engine.layers[:4]:
        factors = engine.factors(layer.name)
        r_out, r_in = choices[layer.name].ranks
        assert explained_variance(factors, r_out, r_in) >= 0.8 - 1e-9
        grid = explained_variance_grid(factors)
        cheaper = [
            (o, i)
            for o in range(1, layer.out_channels + 1)
            for i in range(1, layer.in_channels + 1)
            if grid[o - 1, i - 1] >= 0.8
            and layer.in_channels * i + o * i * layer.kernel_volume + o * layer.out_channels
            < layer.in_channels * r_in + r_out * r_in * layer.kernel_volume + r_out * layer.out_channels
        ]
        assert not cheaper
    assert all(
        c.ranks == (engine.layer(n).out_channels, engine.layer(n).in_channels)
        or explained_variance(engine.factors(n), *c.ranks) >= 1 - 1e-9
        for n, c in explained_variance_ranks(engine, 1.0).items()
    )


def test_fused_norm_equals_the_plain_blocks(engine: TuckerEngine) -> None:
    ranks = ranks_of(df_ranks(engine.layers, 0.5))
    fused = engine.compress(ranks)
    plain = engine.compress(ranks, fuse_norm=False)
    assert any(isinstance(m, TuckerConvNormAct) for m in fused.modules())
    assert not any(isinstance(m, TuckerConvNormAct) for m in plain.modules())
    assert fused.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.inference_mode():
        expected, got = plain(x), fused(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fused(x).float()
    scale = float(expected.max() - expected.min())
    assert float((got - expected).abs().max()) <= 1e-4 * scale
    assert float((low - expected).abs().mean()) <= 0.05 * scale


def test_save_and_load_round_trip(engine: TuckerEngine, model_folder: Path, tmp_path: Path) -> None:
    expert = load_expert(spec_from_folder(model_folder))
    ranks = ranks_of(df_ranks(engine.layers, 0.4))
    compressed = engine.compress(ranks)
    folder = save_compressed(expert, compressed, tmp_path, {"df": 0.4})
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["method"] == "hosvd-slice" and manifest["df"] == 0.4
    assert {k: tuple(v["ranks"]) for k, v in manifest["layers"].items()} == {
        k: v for k, v in ranks.items() if v != (engine.layer(k).out_channels, engine.layer(k).in_channels)
    }
    assert "tucker_compression" in read_checkpoint(folder / "fold_0" / "checkpoint_final.pth")  # weights_only
    loaded = load_expert(spec_from_folder(folder))
    assert sum(isinstance(m, TuckerConv) for m in loaded.network.modules()) == len(manifest["layers"])
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(loaded.network(x), compressed(x), atol=1e-5)
    with pytest.raises(CompressedModelError, match="overwrite"):
        save_compressed(expert, compressed, model_folder.parent.parent)


def test_pruning_zeroes_smallest_channels_at_a_matched_budget(engine: TuckerEngine) -> None:
    layers = prunable_layers(engine)
    output_layer = list(engine.layer_shapes)[-1]  # the last conv to run: its channels are the class logits
    assert [layer.name for layer in layers] == [n for n in engine.layer_names if n != output_layer]
    pruned = prune(engine, 0.5)
    original = dict(engine.network.named_modules())
    result = dict(pruned.network.named_modules())
    name = layers[1].name
    weight = original[name].weight.detach()
    norms = weight.reshape(weight.shape[0], -1).norm(dim=1)
    zeroed = result[name].weight.detach().reshape(weight.shape[0], -1).abs().sum(dim=1) == 0
    assert int(zeroed.sum()) == weight.shape[0] // 2
    assert float(norms[zeroed].max()) <= float(norms[~zeroed].min())
    assert torch.equal(original[name].weight, weight)  # the original is untouched
    assert result[output_layer].weight is original[output_layer].weight
    ranks = ranks_of(df_ranks(engine.layers, 0.3))
    tucker = count_network(engine, ranks)
    target = sum(c.params for c in tucker.layers.values())
    matched = prune_to_match(engine, tucker.params)
    assert matched.conv_params_kept <= target < kept_conv_params(engine, matched.fraction - 0.02)
    assert matched.cost.params == tucker.params - target + matched.conv_params_kept <= tucker.params
    assert matched.cost.flops_by_op["instance_norm"] == tucker.flops_by_op["instance_norm"]
    assert matched.cost.conv_flops < count_network(engine).conv_flops
    assert prune_to_match(engine, ranks).fraction == matched.fraction  # ranks: that Tucker network's count


def test_hooi_refines_and_is_flagged(engine: TuckerEngine) -> None:
    ranks = {name: (8, 8) for name in engine.layer_names[1:3]}
    refined = refine_with_hooi(engine, ranks)
    for name, factors in refined.items():
        assert factors.method == "hooi"
        assert explained_variance(factors, 8, 8) >= explained_variance(engine.factors(name), 8, 8) - 1e-6
    network = engine.compress(ranks, refined=refined)
    methods = {m.layer_name: m.method for m in network.modules() if isinstance(m, TuckerConv)}
    assert methods == {name: "hooi" for name in ranks}
    with pytest.raises(RankError, match="refined"):
        engine.compress({name: (9, 8) for name in ranks}, refined=refined)


def test_timing_interleaves_and_leaves_the_network_alone(engine: TuckerEngine) -> None:
    compressed = engine.compress(ranks_of(df_ranks(engine.layers, 0.3)))
    before = {k: v.clone() for k, v in engine.network.state_dict().items()}
    timings = compare_forward(
        {"original": engine.network, "compressed": compressed},
        (1, 1, 32, 32, 32),
        ForwardSetup(channels_last=True, precision="bf16", threads=1),
        warmup=0,
        runs=2,
    )
    assert set(timings) == {"original", "compressed"}
    assert all(len(t.runs_wall) == 2 and t.wall_seconds > 0 for t in timings.values())
    assert "bf16, channels_last_3d on cpu, 1 threads" == timings["original"].setup
    for key, value in engine.network.state_dict().items():
        assert torch.equal(value, before[key]) and value.is_contiguous()
    with pytest.raises(TimingSetupError, match="fp16"):
        ForwardSetup(precision="fp16").check()


def test_cli_compress_and_bench(
    model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    layer = "decoder.stages.0.convs.0.conv"
    assert (
        main(
            [
                "compress",
                "--model",
                str(model_folder),
                "--df",
                "0.5",
                "--layer",
                f"{layer}=9,10",
                "-o",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    entry = report["experts"]["tiny"]
    assert (
        entry["params_compressed"] < entry["params_original"]
        and entry["flops_compressed"] < entry["flops_original"]
    )
    assert entry["ranks"][layer]["r_out"] == 9 and entry["ranks"][layer]["source"] == "override"
    assert report["total"]["params_original"] == entry["params_original"]
    assert load_expert(spec_from_folder(Path(entry["output_folder"]))).network is not None

    assert main(["bench", "recompress", "--model", str(model_folder), "--repeats", "1", "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)["tiny"]
    assert set(bench["recompress_seconds"]) >= {"0.1", "0.5", "1"} and bench["heatmaps_seconds"] > 0

    assert (
        main(
            [
                "bench",
                "forward",
                "--model",
                str(model_folder),
                "--df",
                "0.5",
                "--runs",
                "1",
                "--warmup",
                "0",
                "--patch",
                "32,32,32",
                "--json",
            ]
        )
        == 0
    )
    forward = json.loads(capsys.readouterr().out)["experts"]["tiny"]["networks"]
    assert forward["original"]["speedup"] == 1.0 and forward["df=0.5"]["flop_ratio"] > 1.0

    assert main(["compress", "--model", str(model_folder), "--layer", "nope=1,1"]) == 2
    assert "no such compressible conv layer" in capsys.readouterr().err
    assert main(["bench", "forward", "--model", str(model_folder), "--df", "0.3", "--patch", "32,x"]) == 2
    assert "--patch" in capsys.readouterr().err


def test_cli_compress_without_a_df_reports_the_original(
    model_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What CI runs from the installed wheel: no --df is the uncompressed report, per expert and per layer."""
    assert main(["compress", "--model", str(model_folder), "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["experts"]["tiny"]
    assert entry["method"] == "none" and entry["ranks"] == {}
    assert entry["params_compressed"] == entry["params_original"] > 0
    assert entry["flops_compressed"] == entry["flops_original"] > entry["conv_flops_original"] > 0
    assert entry["flops_by_op_original"]["instance_norm"] == entry["flops_original"] - entry["conv_flops_original"]
    assert sum(layer["flops_original"] for layer in entry["layers"].values()) == entry["conv_flops_original"]


def test_cli_compress_prunes_at_the_tucker_parameter_count(
    model_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = {}
    for method in ("tucker", "prune"):
        assert main(["compress", "--model", str(model_folder), "--df", "0.3", "--method", method, "--json"]) == 0
        reports[method] = json.loads(capsys.readouterr().out)["experts"]["tiny"]
    tucker, pruned = reports["tucker"], reports["prune"]  # the tiny model's few channels: coarse steps
    assert pruned["method"] == "prune" and 0 < pruned["prune_fraction"] < 1
    assert 0.85 * tucker["params_compressed"] <= pruned["params_compressed"] <= tucker["params_compressed"]
    assert main(["compress", "--model", str(model_folder), "--df", "0.3", "--method", "prune", "--hooi"]) == 2
    assert "--hooi" in capsys.readouterr().err
    assert main(["compress", "--model", str(model_folder), "--method", "prune"]) == 2
    assert "give --df, --ev or --layer" in capsys.readouterr().err


def test_plain_convs_compute_the_same_function(engine: TuckerEngine) -> None:
    compressed = engine.compress(ranks_of(df_ranks(engine.layers, 0.3)))
    plain = with_plain_convs(compressed)
    assert not any(isinstance(m, TuckerConv) for m in plain.modules())
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        expected, got = compressed(x), plain(x)
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.max() - expected.min())


def test_heatmap_grid_is_monotone_on_tiny(engine: TuckerEngine) -> None:
    grid = explained_variance_grid(engine.factors(engine.layer_names[1]))
    assert np.all(np.diff(grid, axis=0) >= -1e-12) and np.all(np.diff(grid, axis=1) >= -1e-12)
