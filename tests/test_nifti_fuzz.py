"""Fuzz NIfTI-1 headers through the volume loader: a valid volume or a VolumeError, never anything else, never a hang.

The header is mutated as raw bytes (nibabel would repair or refuse most of these values on save), so the loader
sees what a broken converter or a damaged disk can produce: absurd dims, pixdims, datatypes, scalings, qform/sform
codes and affine entries (NaN and infinities included).
"""

from __future__ import annotations

import gzip
import signal
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuckerscope.core.imaging.volume import Volume, VolumeError, load_volume

SHAPE = (9, 8, 7)
SECONDS_PER_LOAD = 20  # a load of this tiny file taking longer than this is a hang
# (offset, struct format) of the NIfTI-1 header fields fuzzed here
DIM = (40, "<8h")
DATATYPE = (70, "<h")
BITPIX = (72, "<h")
PIXDIM = (76, "<8f")
VOX_OFFSET = (108, "<f")
SCL = (112, "<2f")
XYZT_UNITS = (123, "<B")
QFORM_CODE = (252, "<h")
SFORM_CODE = (254, "<h")
QUATERN_AND_OFFSETS = (256, "<6f")
SROWS = (280, "<12f")
# the datatypes of the NIfTI-1 standard plus a few codes no reader knows
DATATYPES = (
    0,
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    768,
    1024,
    1280,
    1536,
    1792,
    2048,
    2304,
    3,
    99,
    -4,
    32767,
)

odd_floats = st.one_of(
    st.sampled_from(
        [0.0, -0.0, 1.0, -1.0, 3.0, 1e-30, 1e30, -1e30, float("nan"), float("inf"), float("-inf")]
    ),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)


def base_image_bytes() -> bytes:
    """A small, valid CT-like .nii (int16, air around soft tissue) as raw bytes."""
    rng = np.random.default_rng(0)
    data = rng.normal(40.0, 30.0, SHAPE)
    data[:2] = -1000.0
    image = nib.Nifti1Image(data.astype(np.int16), np.diag([1.5, 1.5, 3.0, 1.0]))
    return image.to_bytes()


BASE = base_image_bytes()


@st.composite
def header_mutations(draw: st.DrawFn) -> list[tuple[tuple[int, str], tuple[float | int, ...]]]:
    """A few raw field overwrites, each (field, values)."""
    mutations = []
    if draw(st.booleans()):
        ndim = draw(st.integers(-2, 9))
        sizes = draw(
            st.lists(
                st.one_of(st.integers(-3, 12), st.sampled_from([0, 1, 255, 4096, 32767])),
                min_size=7,
                max_size=7,
            )
        )
        mutations.append((DIM, (ndim, *sizes)))
    if draw(st.booleans()):
        datatype = draw(st.sampled_from(DATATYPES))
        mutations.append((DATATYPE, (datatype,)))
        bitpix = draw(st.sampled_from([0, 1, 8, 16, 32, 64, 128, 256, 7]))
        mutations.append((BITPIX, (bitpix,)))
    if draw(st.booleans()):
        mutations.append((PIXDIM, tuple(draw(st.lists(odd_floats, min_size=8, max_size=8)))))
    if draw(st.booleans()):
        mutations.append((VOX_OFFSET, (draw(st.sampled_from([0.0, 100.0, 352.0, 353.5, 1e9, -352.0])),)))
    if draw(st.booleans()):
        mutations.append((SCL, (draw(odd_floats), draw(odd_floats))))
    if draw(st.booleans()):
        mutations.append((XYZT_UNITS, (draw(st.integers(0, 255)),)))
    if draw(st.booleans()):
        mutations.append((QFORM_CODE, (draw(st.integers(-2, 6)),)))
        mutations.append((SFORM_CODE, (draw(st.integers(-2, 6)),)))
    if draw(st.booleans()):
        mutations.append((QUATERN_AND_OFFSETS, tuple(draw(st.lists(odd_floats, min_size=6, max_size=6)))))
    if draw(st.booleans()):
        srows = list(struct.unpack_from(SROWS[1], BASE, SROWS[0]))
        for index in draw(st.lists(st.integers(0, 11), max_size=4)):
            srows[index] = draw(odd_floats)
        mutations.append((SROWS, tuple(srows)))
    return mutations


def mutated(mutations: list[tuple[tuple[int, str], tuple[float | int, ...]]], data_fraction: float) -> bytes:
    raw = bytearray(BASE)
    for (offset, fmt), values in mutations:
        struct.pack_into(fmt, raw, offset, *values)
    keep = 352 + int((len(raw) - 352) * data_fraction)
    return bytes(raw[:keep])


@contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    """Fail instead of blocking CI forever if a load hangs (SIGALRM: main thread, POSIX)."""

    def fail(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"load_volume did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_loaded(volume: Volume) -> None:
    """What the rest of TuckerScope relies on once a volume is accepted."""
    assert volume.data.ndim == 3 and min(volume.data.shape) >= 2
    assert volume.data.dtype == np.float32
    assert np.isfinite(volume.data).all()
    assert np.isfinite(volume.affine).all()
    assert all(0 < s <= 50 for s in volume.spacing)


@settings(
    max_examples=150,
    deadline=None,  # the hang guard bounds each example; timings on the shared CI machine are noisy
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    mutations=header_mutations(),
    data_fraction=st.sampled_from([1.0, 1.0, 1.0, 0.5, 0.0]),
    compressed=st.booleans(),
)
def test_fuzzed_header_loads_or_raises_a_volume_error(tmp_path: Path, mutations, data_fraction, compressed):
    raw = mutated(mutations, data_fraction)
    path = tmp_path / ("fuzz.nii.gz" if compressed else "fuzz.nii")
    path.write_bytes(gzip.compress(raw, compresslevel=1) if compressed else raw)
    with hang_guard(SECONDS_PER_LOAD), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            volume = load_volume(path)
        except VolumeError as error:
            message = str(error)
            assert message and "\n" not in message
            volume = None
    assert not caught, f"warnings reach stderr: {[str(w.message) for w in caught]}"
    if volume is not None:
        check_loaded(volume)


def test_unmutated_base_loads(tmp_path):
    """The fuzz starts from a volume the loader accepts, so refusals are caused by the mutations."""
    path = tmp_path / "base.nii"
    path.write_bytes(BASE)
    check_loaded(load_volume(path))


@pytest.mark.parametrize(
    "mutations",
    [
        [(DIM, (3, 4096, 4096, 4096, 1, 1, 1, 1))],  # 68.7 G voxels promised by a 1 kB file
        [(DATATYPE, (1,)), (BITPIX, (1,))],  # DT_BINARY: one bit per voxel, no reader supports it
        [(SFORM_CODE, (1,)), (SROWS, (float("nan"),) * 12)],
        [(DIM, (5, 1, 1, 1, -1, 255, 0, 0))],  # a negative size: numpy's memmap raised OverflowError
        [(DIM, (-1, 0, 0, 0, 0, 0, 0, 0)), (VOX_OFFSET, (0.0,))],  # nibabel raised HeaderDataError
    ],
    ids=["huge_dims", "binary_datatype", "nan_sform", "negative_size", "bad_vox_offset"],
)
def test_known_hostile_headers(tmp_path, mutations):
    """Regressions found by the fuzz: each one ends in a VolumeError, not a crash or a huge allocation."""
    path = tmp_path / "hostile.nii.gz"
    path.write_bytes(gzip.compress(mutated(mutations, 1.0)))
    with hang_guard(SECONDS_PER_LOAD), pytest.raises(VolumeError):
        load_volume(path)
