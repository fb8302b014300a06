"""`tuckerscope segment`: outputs on the input grid, --split, --roi, --df, and one-line errors on bad input."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from tiny_model import write_tiny_model
from tuckerscope.core.cli import main as cli
from tuckerscope.core.cli.segment import parse_dfs, parse_roi
from tuckerscope.core.runtime.errors import UserError


@pytest.fixture(autouse=True)
def segment_only(monkeypatch):
    """Run the CLI with just this subcommand registered, on one torch thread (CI machines are busy)."""
    monkeypatch.setattr(cli, "COMMANDS", ("segment",))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model"), seed=3)


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory):
    """An oblique-free but non-RAS CT (LPS, like DICOM converts) of 36x34x32 voxels at 3 mm."""
    rng = np.random.default_rng(0)
    data = rng.normal(40, 30, (36, 34, 32))
    data[:, :4] = -1000
    data[10:20, 10:18] += 100
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.int16), np.diag([-3.0, -3.0, 3.0, 1.0])), path)
    return path


def run(*argv: str) -> int:
    return cli.main(["segment", *argv, "--quiet", "--threads", "1"])


def test_multilabel_output_on_the_input_grid(model, ct_file, tmp_path):
    out = tmp_path / "seg.nii.gz"
    assert run("-i", str(ct_file), "-o", str(out), "--model", str(model)) == 0
    image, ct = nib.load(out), nib.load(ct_file)
    assert image.shape == ct.shape
    np.testing.assert_allclose(image.affine, ct.affine)
    labels = np.asanyarray(image.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2} and len(np.unique(labels)) > 1
    assert "liver" in (tmp_path / "seg_itksnap_labels.txt").read_text()
    assert (tmp_path / "seg.ctbl").is_file()


def test_split_roi_and_df(model, ct_file, tmp_path):
    full = tmp_path / "full.nii.gz"
    assert run("-i", str(ct_file), "-o", str(full), "--model", str(model)) == 0
    out = tmp_path / "masks"
    assert (
        run("-i", str(ct_file), "-o", str(out), "--model", str(model), "--split", "--roi", ":,:,10:14") == 0
    )
    liver = np.asanyarray(nib.load(out / "liver.nii.gz").dataobj)
    reference = np.asanyarray(nib.load(full).dataobj) == 1
    np.testing.assert_array_equal(liver[:, :, 10:14], reference[:, :, 10:14])
    assert not liver[:, :, :10].any() and not liver[:, :, 14:].any()
    assert sorted(p.name for p in out.iterdir()) == ["liver.nii.gz", "spleen.nii.gz"]
    compressed = tmp_path / "df.nii.gz"
    assert run("-i", str(ct_file), "-o", str(compressed), "--model", str(model), "--df", "0.3") == 0
    assert nib.load(compressed).shape == nib.load(ct_file).shape


def test_pruning_baseline(model, ct_file, tmp_path):
    """--method prune runs the paper's baseline (same parameter count as Tucker at that DF): other labels."""
    outputs = {}
    for method in ("tucker", "prune"):
        outputs[method] = tmp_path / f"{method}.nii.gz"
        argv = ("-i", str(ct_file), "-o", str(outputs[method]), "--model", str(model), "--df", "0.3")
        assert run(*argv, "--method", method) == 0
    tucker, pruned = (np.asanyarray(nib.load(outputs[m]).dataobj) for m in ("tucker", "prune"))
    assert tucker.shape == pruned.shape and not np.array_equal(tucker, pruned)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--df", "1.5"], "--df '1.5': DF must be between"),
        (["--df", "liver=0.3"], "no expert named 'liver'"),
        (["--roi", "1:2,3"], "three ranges"),
        (["--roi", "a:b,:,:"], "integers"),
        (["--roi", "5:5,:,:"], "empty along axis x"),
        (["--precision", "fp32", "--device", "cuda"], "CUDA"),
    ],
)
def test_bad_options_give_one_line_errors(model, ct_file, tmp_path, capsys, argv, message):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = run("-i", str(ct_file), "-o", str(tmp_path / "x.nii.gz"), "--model", str(model), *argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_USER_ERROR
    assert err[-1].startswith("tuckerscope: error:") and message in err[-1]
    assert not (tmp_path / "x.nii.gz").exists()


def test_bad_input_and_output(model, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert run("-i", str(text), "-o", str(tmp_path / "x.nii.gz"), "--model", str(model)) == 2
    assert "not a NIfTI file" in capsys.readouterr().err
    assert run("-i", str(text), "-o", str(tmp_path / "x.png"), "--model", str(model)) == 2
    assert "must end in .nii.gz" in capsys.readouterr().err


def test_missing_ts_install_is_explained(ct_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "empty_home"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert run("-i", str(ct_file), "-o", str(tmp_path / "x.nii.gz"), "--task", "total_fast") == 2
    err = capsys.readouterr().err
    assert "totalseg_download_weights -t total_fast" in err and len(err.strip().splitlines()) == 1


def test_parsers():
    assert parse_roi("1:5,:,7:") == (slice(1, 5), slice(None), slice(7, None))
    assert parse_dfs(["0.3", "ribs=0.5"], ["organs", "ribs"]) == {"organs": 0.3, "ribs": 0.5}
    assert parse_dfs(["1.0"], ["organs"]) == {}
    with pytest.raises(UserError):
        parse_dfs(["x"], ["organs"])


@pytest.mark.parametrize("df", [None, "0.3"])
def test_experts_are_loaded_one_at_a_time(ct_file, tmp_path, monkeypatch, df):
    """An expert's network (and Tucker factors) is gone before the next expert loads: peak memory holds one."""
    import weakref

    from tuckerscope.core.cli import segment as segment_cli

    for seed, name in enumerate(("a", "b", "c")):
        write_tiny_model(tmp_path / "models" / name, seed=seed)
    loaded: list[weakref.ref] = []
    load = segment_cli.load_expert

    def load_checked(spec):
        alive = [ref for ref in loaded if ref() is not None]
        assert not alive, f"{len(alive)} earlier expert network(s) still in memory when loading {spec.name}"
        expert = load(spec)
        loaded.append(weakref.ref(expert.network))
        return expert

    monkeypatch.setattr(segment_cli, "load_expert", load_checked)
    out = tmp_path / "seg.nii.gz"
    argv = ["-i", str(ct_file), "-o", str(out), "--model", str(tmp_path / "models")]
    assert run(*argv, *(["--df", df] if df else [])) == 0
    assert len(loaded) == 3
