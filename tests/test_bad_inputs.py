"""Every case of the bad-input corpus through the core API and the CLI: refused with its specific error and one
clear line, or accepted (warning included) with labels on the right anatomy; never a traceback, never code run
from a model file, never an output file left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bad_inputs import (
    CASES,
    CASES_BY_NAME,
    CODE_RAN_MARKER,
    BadInput,
    Refused,
    build_case,
    model_folder,
    write_reference_ct,
)

from tuckerscope.core.cli import main as cli
from tuckerscope.core.imaging.volume import Volume, load_volume
from tuckerscope.core.models.model_folder import LoadedExpert, load_expert, spec_from_folder
from tuckerscope.core.models.model_sources import resolve_source
from tuckerscope.core.runtime.errors import UserError
from tuckerscope.core.segmentation.segmenter import InferenceOptions, Segmenter
from tuckerscope.core.session.loading import load_expert_models, resolve_model_source

VOLUME_CASES = [case for case in CASES if case.target == "volume"]
MODEL_CASES = [case for case in CASES if case.target == "model"]
# One subprocess per kind of failure (plus one success): each start costs seconds of imports.
SUBPROCESS_CASES = ("truncated_gzip", "dicom_missing_slices", "hostile_torch_checkpoint", "lps_flip")
ONE_THREAD = InferenceOptions(
    threads=1
)  # the CI machine is shared; one thread avoids oversubscription stalls


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    return {case.name: build_case(case, root) for case in CASES}


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    return model_folder(tmp_path_factory.mktemp("good_model"))


@pytest.fixture(scope="module")
def good_ct(tmp_path_factory) -> Path:
    return write_reference_ct(tmp_path_factory.mktemp("good_ct"))


@pytest.fixture(scope="module")
def tiny_expert(good_model) -> LoadedExpert:
    return load_expert(spec_from_folder(good_model))


@pytest.fixture(scope="module")
def reference_labels(good_ct, tiny_expert) -> np.ndarray:
    volume = load_volume(good_ct)
    return Segmenter(volume.data, volume.affine).segment(tiny_expert, options=ONE_THREAD)


def test_corpus_is_broad_enough():
    assert len(CASES) >= 25
    assert len(CASES_BY_NAME) == len(CASES), "case names must be unique"
    assert sum(not case.refused for case in CASES) >= 5  # flips, MR, int8, shear and mixed series load


def _case_folder(corpus: dict[str, Path], case: BadInput) -> Path:
    path = corpus[case.name]
    return next(p for p in (path, *path.parents) if p.name == case.name)


def _assert_refusal(error: BaseException, expected: Refused) -> None:
    assert isinstance(error, expected.error), f"{type(error).__name__}: {error}"
    message = str(error)
    assert re.search(expected.pattern, message), message
    assert "\n" not in message and "Traceback" not in message


# ----- core API ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VOLUME_CASES, ids=lambda c: c.name)
def test_volume_case_through_the_loader(case, corpus, tiny_expert, reference_labels):
    if isinstance(case.expected, Refused):
        with pytest.raises(UserError) as caught:
            load_volume(corpus[case.name])
        _assert_refusal(caught.value, case.expected)
        return
    volume = load_volume(corpus[case.name])
    _check_warnings(volume, case.expected.warning)
    labels = Segmenter(volume.data, volume.affine).segment(tiny_expert, options=ONE_THREAD)
    assert labels.shape == volume.shape
    to_reference = case.expected.to_reference
    if to_reference is not None:
        assert len(np.unique(reference_labels)) >= 2, "the check needs a segmentation with structure"
        np.testing.assert_array_equal(to_reference(labels), reference_labels)
        # the same comparison would catch a left-right mix-up:
        assert not np.array_equal(to_reference(np.flip(labels, 0)), reference_labels)


def _check_warnings(volume: Volume, pattern: str | None) -> None:
    if pattern is None:
        assert volume.warnings == []
    else:
        assert any(re.search(pattern, w) for w in volume.warnings), volume.warnings
        assert all("\n" not in w for w in volume.warnings)


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name)
def test_model_case_through_the_model_source(case, corpus):
    """The CLI's route: resolve_source(model=...) then load every expert."""
    with pytest.raises(UserError) as caught:
        resolve_source(model=corpus[case.name]).load()
    _assert_refusal(caught.value, case.expected)
    assert not (_case_folder(corpus, case) / CODE_RAN_MARKER).exists()


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name)
def test_model_case_through_the_session_loader(case, corpus):
    """The window's route: resolve_model_source(...) then load_expert_models (load + factorise)."""
    with pytest.raises(UserError) as caught:
        load_expert_models(resolve_model_source(str(corpus[case.name])))
    assert re.search(case.expected.pattern, str(caught.value)), str(caught.value)
    assert "\n" not in str(caught.value)
    assert not (_case_folder(corpus, case) / CODE_RAN_MARKER).exists()


def test_hostile_pickle_would_run_code_if_unpickled(corpus, tmp_path):
    """The marker check is meaningful: plain pickle.load of the same checkpoint does create the marker."""
    import pickle

    case = CASES_BY_NAME["hostile_plain_pickle"]
    checkpoint = corpus[case.name] / "fold_0" / "checkpoint_final.pth"
    marker = _case_folder(corpus, case) / CODE_RAN_MARKER
    assert not marker.exists()
    try:
        pickle.loads(checkpoint.read_bytes())  # the unsafe load every safe path must avoid
        assert marker.exists()
    finally:
        marker.unlink(missing_ok=True)


# ----- CLI in-process (every case) --------------------------------------------------------------------------------


def _cli_args(case: BadInput, path: Path, good_ct: Path, good_model: Path, output: Path) -> list[str]:
    ct, model = (path, good_model) if case.target == "volume" else (good_ct, path)
    return ["segment", "-i", str(ct), "-o", str(output), "--model", str(model), "--threads", "1"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_through_the_cli(case, corpus, good_ct, good_model, tmp_path, capfd):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "segmentation.nii.gz"
    code = cli.main(_cli_args(case, corpus[case.name], good_ct, good_model, output))
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    if isinstance(case.expected, Refused):
        assert code == cli.EXIT_USER_ERROR
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, captured.err
        assert lines[0].startswith("tuckerscope: error: ")
        assert re.search(case.expected.pattern, lines[0]), lines[0]
        assert list(out_dir.iterdir()) == [], "a refused input must leave nothing behind"
    else:
        assert code == 0, captured.err
        written = nib.load(output)
        volume = load_volume(corpus[case.name])
        assert written.shape == volume.shape
        np.testing.assert_allclose(written.affine, volume.affine, atol=1e-4)
        if case.expected.warning is not None:
            assert re.search(case.expected.warning, captured.err), captured.err
    if case.target == "model":
        assert not (_case_folder(corpus, case) / CODE_RAN_MARKER).exists()


# ----- CLI as a user runs it (a representative subset, in parallel) -----------------------------------------------


def test_console_script_subset(corpus, good_ct, good_model, tmp_path):
    script = Path(sys.executable).with_name("tuckerscope")
    assert script.exists(), f"console script missing next to {sys.executable}"
    environment = {**os.environ, "TOTALSEG_HOME_DIR": str(tmp_path / "ts_home")}
    runs = {}
    for name in SUBPROCESS_CASES:
        case = CASES_BY_NAME[name]
        out_dir = tmp_path / name
        out_dir.mkdir()
        args = _cli_args(case, corpus[name], good_ct, good_model, out_dir / "segmentation.nii.gz")
        runs[name] = (
            out_dir,
            subprocess.Popen(
                [str(script), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=environment,
            ),
        )
    for name, (out_dir, process) in runs.items():
        _, err = process.communicate(timeout=600)
        case = CASES_BY_NAME[name]
        assert "Traceback" not in err, err
        if isinstance(case.expected, Refused):
            assert process.returncode == cli.EXIT_USER_ERROR, (name, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("tuckerscope: error: "), (name, err)
            assert re.search(case.expected.pattern, lines[0]), (name, lines[0])
            assert list(out_dir.iterdir()) == [], name
        else:
            assert process.returncode == 0, (name, err)
            assert (out_dir / "segmentation.nii.gz").is_file()
        if case.target == "model":
            assert not (_case_folder(corpus, case) / CODE_RAN_MARKER).exists()
