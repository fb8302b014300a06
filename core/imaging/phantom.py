"""A procedural torso CT phantom in Hounsfield units with its true label map.

The app must show the whole idea on a machine with no TotalSegmentator weights and no patient data, and the
demo experts need endless, varied training cases. The phantom is deterministic from a seed, and the seed
varies body habitus, organ sizes and positions, tissue intensities, noise and inhomogeneity, so a network
trained on many seeds generalises to new ones.

Geometry is built in millimetres in the RAS+ world frame (x towards the patient's right, y anterior,
z superior), then rasterised on a voxel grid whose affine maps voxel indices straight to those
millimetres. Arrays are in nibabel (x, y, z) order. Labels are painted at voxel centres in anatomical
order (later structures win); the CT is the per-tissue HU map plus tissue texture, blurred by a point-spread function (partial volume),
with a smooth inhomogeneity and correlated noise on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    import nibabel as nib

DEFAULT_SHAPE: tuple[int, int, int] = (112, 88, 80)
DEFAULT_SPACING: float = 3.0

VERTEBRAE: tuple[str, ...] = tuple(
    f"vertebrae_{v}" for v in ("L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8")
)
RIB_NUMBERS: tuple[int, ...] = (8, 9, 10, 11, 12)
RIBS_LEFT: tuple[str, ...] = tuple(f"rib_left_{n}" for n in RIB_NUMBERS)
RIBS_RIGHT: tuple[str, ...] = tuple(f"rib_right_{n}" for n in RIB_NUMBERS)

CLASS_NAMES: dict[int, str] = dict(
    enumerate(
        (
            "spleen",
            "kidney_right",
            "kidney_left",
            "liver",
            "lung_left",
            "lung_right",
            "heart",
            "aorta",
            "inferior_vena_cava",
            "small_bowel",
            "stomach",
            "spinal_cord",
            "intervertebral_discs",
            "skeletal_muscle",
            "autochthon_left",
            "autochthon_right",
            "iliopsoas_left",
            "iliopsoas_right",
            "subcutaneous_fat",
            "torso_fat",
            "skin",
            *VERTEBRAE,
            *RIBS_LEFT,
            *RIBS_RIGHT,
        ),
        start=1,
    )
)
LABEL_IDS: dict[str, int] = {name: i for i, name in CLASS_NAMES.items()}

CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    "vertebrae": VERTEBRAE,
    "ribs_left": RIBS_LEFT,
    "ribs_right": RIBS_RIGHT,
    "ribs": RIBS_LEFT + RIBS_RIGHT,
    "skeletal_muscle": (
        "skeletal_muscle",
        "autochthon_left",
        "autochthon_right",
        "iliopsoas_left",
        "iliopsoas_right",
    ),
}
"""Coarser classes the demo experts segment, as unions of the phantom's fine classes."""

# Portal-venous-phase CT: (mean HU, spread across seeds). Bone values are for cancellous bone; the cortex
# gets CORTEX_BOOST_HU on top.
TISSUE_HU: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "table": (-150.0, 60.0),
    "skin": (30.0, 10.0),
    "subcutaneous_fat": (-105.0, 10.0),
    "torso_fat": (-92.0, 10.0),
    "skeletal_muscle": (52.0, 8.0),
    "lung": (-860.0, 30.0),
    "heart": (140.0, 25.0),
    "aorta": (175.0, 30.0),
    "inferior_vena_cava": (125.0, 15.0),
    "liver": (105.0, 12.0),
    "spleen": (118.0, 12.0),
    "kidney": (175.0, 20.0),
    "small_bowel": (35.0, 10.0),
    "stomach": (25.0, 10.0),
    "spinal_cord": (28.0, 8.0),
    "intervertebral_discs": (90.0, 12.0),
    "vertebrae": (210.0, 40.0),
    "ribs": (240.0, 40.0),
}
CORTEX_BOOST_HU: tuple[float, float] = (380.0, 80.0)
GAS_HU = -950.0

# RAS+: world x grows towards the patient's right, so the patient's left lies at negative x.
LEFT, RIGHT = -1.0, 1.0
SPINE_HALF_DEPTH = 16.0  # mm, front-to-back half-depth of a lumbar vertebral body: places canal and vessels
PERIRENAL_FAT_MM = 5.0  # thickness of the fat around each kidney

_TISSUE_OF_CLASS: dict[str, str] = {
    "kidney_right": "kidney",
    "kidney_left": "kidney",
    "lung_left": "lung",
    "lung_right": "lung",
    "autochthon_left": "skeletal_muscle",
    "autochthon_right": "skeletal_muscle",
    "iliopsoas_left": "skeletal_muscle",
    "iliopsoas_right": "skeletal_muscle",
    **{name: "vertebrae" for name in VERTEBRAE},
    **{name: "ribs" for name in RIBS_LEFT + RIBS_RIGHT},
}

# (level, body height mm, height of the disc above it mm, caudal drop of the spinous process tip in body
# heights) at scale 1, from the bottom of the grid upwards. The drop eases from the steep thoracic processes
# to the flat lumbar ones so that neighbouring processes never touch.
_SPINE_LAYOUT: tuple[tuple[str, float, float, float], ...] = (
    ("L4", 26.0, 9.0, 0.2),
    ("L3", 27.0, 9.0, 0.2),
    ("L2", 26.0, 9.0, 0.2),
    ("L1", 25.0, 8.0, 0.2),
    ("T12", 24.0, 6.5, 0.45),
    ("T11", 23.0, 6.0, 0.7),
    ("T10", 22.0, 6.0, 0.85),
    ("T9", 21.0, 5.5, 0.9),
    ("T8", 20.0, 5.5, 0.9),
)


class PhantomError(ValueError):
    """Bad phantom parameters (grid too small, unknown class name)."""


@dataclass(frozen=True, eq=False)
class Phantom:
    """One generated CT with its true labels, in nibabel (x, y, z) order and RAS+ world millimetres."""

    ct: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    class_names: dict[int, str]
    seed: int

    def mask(self, name: str) -> np.ndarray:
        """Boolean mask of a fine class ('liver') or of a group of them ('vertebrae', 'ribs_left')."""
        return np.isin(self.labels, fine_label_ids(name))

    def label_map(self, classes: Mapping[int, str]) -> np.ndarray:
        """The true labels renumbered for a model: {its label value: fine class or group name}, rest 0."""
        return lookup_table(classes)[self.labels]

    def to_nifti(self) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
        """(CT image in HU as float32, label image as uint8), both with the phantom's affine."""
        import nibabel as nib

        ct = nib.Nifti1Image(self.ct, self.affine)
        labels = nib.Nifti1Image(self.labels, self.affine)
        for image in (ct, labels):
            image.header.set_xyzt_units("mm")
            image.set_qform(self.affine, code=1)
            image.set_sform(self.affine, code=1)
        return ct, labels


def lookup_table(classes: Mapping[int, str]) -> np.ndarray:
    """Fine phantom label -> label value in ``classes`` ({value: fine class or group name}), 0 elsewhere."""
    table = np.zeros(256, dtype=np.uint8)
    for value, name in classes.items():
        if not 0 < int(value) < 256:
            raise PhantomError(f"label value {value} for {name!r} is outside 1..255")
        table[fine_label_ids(name)] = int(value)
    return table


def fine_label_ids(name: str) -> list[int]:
    """The phantom's label values making up a fine class or a group ('ribs_left' -> rib_left_8..12)."""
    names = CLASS_GROUPS.get(name, (name,))
    unknown = [n for n in names if n not in LABEL_IDS]
    if unknown:
        raise PhantomError(
            f"the phantom has no class {unknown[0]!r}; it knows its fine classes and {', '.join(CLASS_GROUPS)}"
        )
    return [LABEL_IDS[n] for n in names]


class _Grid:
    """Voxel-centre world coordinates of the grid, with cheap sub-boxes for small structures."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape = shape
        self.spacing = spacing
        nx, ny, nz = shape
        sx, sy, sz = spacing
        self.x = ((np.arange(nx) - (nx - 1) / 2) * sx).astype(np.float32)
        self.y = ((np.arange(ny) - (ny - 1) / 2) * sy).astype(np.float32)
        self.z = ((np.arange(nz) + 0.5) * sz).astype(np.float32)
        self.affine = np.diag([sx, sy, sz, 1.0])
        self.affine[:3, 3] = (self.x[0], self.y[0], self.z[0])

    @property
    def top(self) -> float:
        return float(self.shape[2] * self.spacing[2])

    def box(
        self, lo: tuple[float, float, float], hi: tuple[float, float, float]
    ) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
        """Slices and broadcastable X, Y, Z of the voxels whose centres lie in [lo, hi]; None if empty."""
        slices = []
        for axis, coords in enumerate((self.x, self.y, self.z)):
            start = int(np.searchsorted(coords, lo[axis], side="left"))
            stop = int(np.searchsorted(coords, hi[axis], side="right"))
            if stop <= start:
                return None
            slices.append(slice(start, stop))
        sl = (slices[0], slices[1], slices[2])
        return (
            sl,
            self.x[sl[0]][:, None, None],
            self.y[sl[1]][None, :, None],
            self.z[sl[2]][None, None, :],
        )


@dataclass(frozen=True)
class _Vertebra:
    name: str
    z0: float
    z1: float
    rx: float
    ry: float
    thoracic: bool
    spinous_drop: float


def _superellipse(
    dx: np.ndarray,
    dy: np.ndarray,
    a: np.ndarray,
    b_front: np.ndarray,
    b_back: np.ndarray,
    p_front: float,
    p_back: float,
) -> np.ndarray:
    """Normalised radius (<= 1 inside) of a torso cross-section: rounder belly, flatter back."""
    front = dy >= 0
    b = np.where(front, b_front, b_back)
    p = np.where(front, p_front, p_back)
    return (np.abs(dx) / a) ** p + (np.abs(dy) / b) ** p


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotation_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


class _Painter:
    """Rasterises one phantom's anatomy into a label map, structure by structure."""

    def __init__(self, grid: _Grid, rng: np.random.Generator, field_rng: np.random.Generator) -> None:
        self.grid = grid
        self.rng = rng
        self.field_rng = field_rng
        self.labels = np.zeros(grid.shape, dtype=np.uint8)
        self.bone_cortex_candidates = np.zeros(grid.shape, dtype=bool)
        self.table = np.zeros(grid.shape, dtype=bool)
        self.gas_level: tuple[int, float] | None = None  # (label, y in mm): gas fills that label above y

    def uniform(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def paint(self, sl: tuple[slice, slice, slice], mask: np.ndarray, name: str) -> None:
        target = self.labels[sl]
        target[np.broadcast_to(mask, target.shape)] = LABEL_IDS[name]

    def ellipsoid(
        self,
        name: str,
        center: tuple[float, float, float],
        semi_axes: tuple[float, float, float],
        rotation: np.ndarray | None = None,
        where: np.ndarray | None = None,
    ) -> None:
        """Paint a (rotated) ellipsoid, optionally only where a full-grid condition holds."""
        reach = max(semi_axes)
        box = self.grid.box(tuple(c - reach for c in center), tuple(c + reach for c in center))
        if box is None:
            return
        sl, x, y, z = box
        d = (x - center[0], y - center[1], z - center[2])
        if rotation is not None:
            # local coordinates = R^T (p - c)
            d = tuple(rotation[0, k] * d[0] + rotation[1, k] * d[1] + rotation[2, k] * d[2] for k in range(3))
        mask = (d[0] / semi_axes[0]) ** 2 + (d[1] / semi_axes[1]) ** 2 + (d[2] / semi_axes[2]) ** 2 <= 1.0
        if where is not None:
            mask &= where[sl]
        self.paint(sl, mask, name)


def _spine_levels(painter: _Painter, top: float) -> tuple[list[_Vertebra], float]:
    """Vertebrae L4..T8 with the grid's bottom cutting L4 and its top cutting T8; returns them and the scale."""
    rng_u = painter.uniform
    bottoms, z = [], 0.0
    for _, height, disc, _ in _SPINE_LAYOUT:
        bottoms.append(z)
        z += height + disc
    low_cut = bottoms[0] + rng_u(0.3, 0.7) * _SPINE_LAYOUT[0][1]
    high_cut = bottoms[-1] + rng_u(0.3, 0.7) * _SPINE_LAYOUT[-1][1]
    scale = top / (high_cut - low_cut)
    vertebrae = []
    for (level, height, _, drop), bottom in zip(_SPINE_LAYOUT, bottoms, strict=True):
        thoracic = level.startswith("T")
        size = rng_u(0.92, 1.08)
        vertebrae.append(
            _Vertebra(
                name=f"vertebrae_{level}",
                z0=(bottom - low_cut) * scale,
                z1=(bottom - low_cut + height) * scale,
                rx=(17.0 if thoracic else 22.0) * size,
                ry=(14.5 if thoracic else 16.0) * size,
                thoracic=thoracic,
                spinous_drop=drop,
            )
        )
    return vertebrae, scale


def make_phantom(
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: float | tuple[float, float, float] = DEFAULT_SPACING,
) -> Phantom:
    """Generate the torso phantom for ``seed`` on a grid of ``shape`` voxels of ``spacing`` mm.

    The grid spans about 34 x 26 x 24 cm at the default 3 mm: lower thorax and upper abdomen, from the
    lumbar spine (L4) to the heart and lung bases (T8).
    """
    spacing3 = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(shape) != 3 or len(spacing3) != 3 or min(spacing3) <= 0:
        raise PhantomError(f"shape and spacing must have three positive entries, got {shape} and {spacing}")
    extent = [n * s for n, s in zip(shape, spacing3, strict=True)]
    if extent[0] < 300 or extent[1] < 220 or extent[2] < 150:
        raise PhantomError(f"the grid spans {extent} mm; the torso needs at least 300 x 220 x 150 mm")
    # Separate streams: anatomy and tissue HU never depend on the grid, random fields and scan noise do.
    anatomy_rng, field_rng, scan_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    grid = _Grid(tuple(int(n) for n in shape), spacing3)
    painter = _Painter(grid, anatomy_rng, field_rng)
    hu = _draw_tissue_hu(anatomy_rng)
    _paint_anatomy(painter)
    ct = _render_ct(painter, hu, scan_rng)
    labels = painter.labels
    ct.flags.writeable = False
    labels.flags.writeable = False
    return Phantom(
        ct=ct,
        labels=labels,
        affine=grid.affine,
        spacing=spacing3,
        class_names=dict(CLASS_NAMES),
        seed=seed,
    )


def _draw_tissue_hu(rng: np.random.Generator) -> dict[str, float]:
    return {tissue: float(rng.normal(mean, spread)) for tissue, (mean, spread) in TISSUE_HU.items()}


def _paint_anatomy(painter: _Painter) -> None:
    grid, u = painter.grid, painter.uniform
    x, y, z = grid.x[:, None, None], grid.y[None, :, None], grid.z[None, None, :]
    top = grid.top
    vertebrae, scale = _spine_levels(painter, top)
    zrel = (z - top / 2) / top  # -0.5 .. 0.5

    # Body habitus: half-width, front/back half-depths, fat and muscle thickness.
    cx, cy = u(-6, 6), u(-4, 8)
    a = u(128, 150) * (1 + u(-0.05, 0.05) * zrel)
    b_front = u(92, 110) * (1 + u(-0.06, 0.04) * zrel)
    b_back = u(92, 104)
    p_front, p_back = u(2.0, 2.3), u(2.6, 3.4)
    fat_side, fat_front, fat_back = u(12, 32), u(12, 30), u(10, 22)
    wall = u(10, 16)
    dx, dy = x - cx, y - cy

    def section(shrink_side: float, shrink_front: float, shrink_back: float) -> np.ndarray:
        return _superellipse(
            dx, dy, a - shrink_side, b_front - shrink_front, b_back - shrink_back, p_front, p_back
        )

    body = section(0, 0, 0) <= 1
    painter.paint(np.s_[:, :, :], body, "skin")
    painter.paint(np.s_[:, :, :], section(2.5, 2.5, 2.5) <= 1, "subcutaneous_fat")
    muscle_outer = section(fat_side, fat_front, fat_back)
    painter.paint(np.s_[:, :, :], muscle_outer <= 1, "skeletal_muscle")
    # Spine position: the vertebral bodies sit about 8 cm in front of the back's skin. Behind the level of
    # the spinal canal the trunk is all muscle and fat; in front of it lies the body cavity.
    xs = cx + u(-3, 3)
    yb = cy - b_back + u(76, 86)
    canal_r = u(7.0, 8.5)
    y_canal = yb - SPINE_HALF_DEPTH - canal_r
    cavity_back = cy - y_canal + u(4, 10)
    back_wall = b_back - cavity_back
    cavity = section(fat_side + wall, fat_front + wall, back_wall) <= 1
    painter.paint(np.s_[:, :, :], cavity, "torso_fat")
    level_z = {v.name.removeprefix("vertebrae_"): (v.z0 + v.z1) / 2 for v in vertebrae}

    # Diaphragm domes: right higher than left; lungs above, abdominal organs below.
    dome_r_apex = level_z["T10"] + u(-8, 8)
    dome_l_apex = dome_r_apex - u(8, 20)
    dome_depth = u(55, 80)
    dome_r = dome_r_apex - dome_depth * (((x - (cx + RIGHT * 55)) / 95) ** 2 + ((y - (cy + 15)) / 110) ** 2)
    dome_l = dome_l_apex - dome_depth * (((x - (cx + LEFT * 55)) / 95) ** 2 + ((y - (cy + 15)) / 110) ** 2)
    dome = np.maximum(dome_r, dome_l)

    # Small bowel: loops of a smooth random field in the lower anterior abdomen.
    bowel_field = _smooth_field(painter.field_rng, grid, sigma_mm=9.0)
    liver_floor = dome_r_apex - u(95, 125) * scale
    abdomen = cavity & (z < liver_floor + 20) & (y > yb + 25)
    painter.paint(np.s_[:, :, :], abdomen & (bowel_field > u(-0.1, 0.3)), "small_bowel")

    # Lungs fill the thoracic cavity above the domes, apart from a mediastinal strip.
    lungs = cavity & (z > dome + 5) & (section(fat_side + wall + 4, fat_front + wall + 4, back_wall + 4) <= 1)
    x_mid = xs + LEFT * u(2, 8)
    strip = u(14, 22)
    painter.paint(np.s_[:, :, :], lungs & (LEFT * (x - x_mid) > strip), "lung_left")
    painter.paint(np.s_[:, :, :], lungs & (RIGHT * (x - x_mid) > strip), "lung_right")
    painter.paint(np.s_[:, :, :], cavity & (z <= dome + 5) & (z > dome), "skeletal_muscle")

    below_dome = cavity & (z < dome - 1)
    above_dome = cavity & (z > dome + 5)
    painter.ellipsoid(
        "heart",
        (cx + LEFT * u(10, 25), cy + u(25, 40), dome_l_apex + u(45, 65)),
        (u(48, 60), u(38, 48), u(45, 55)),
        rotation=_rotation_z(LEFT * u(0.2, 0.5)),
        where=above_dome,
    )

    # Liver: a large right lobe under the right dome plus a left lobe reaching across the midline; it stays
    # out of the retroperitoneum in front of the spine, where the aorta runs.
    retroperitoneum = ((x - (xs + LEFT * 8)) / u(38, 46)) ** 2 + ((y - (yb + 5)) / u(38, 46)) ** 2 <= 1
    liver_space = below_dome & ~retroperitoneum
    # the right lobe reaches above the dome's apex so that the diaphragm, not the ellipsoid, shapes its top
    liver_height = dome_r_apex - liver_floor
    liver_z = liver_floor + u(0.55, 0.65) * liver_height
    painter.ellipsoid(
        "liver",
        (cx + RIGHT * u(45, 65), cy + u(0, 15), liver_z),
        (u(85, 105), u(80, 95), u(0.7, 0.8) * liver_height),
        where=liver_space,
    )
    painter.ellipsoid(
        "liver",
        (cx + LEFT * u(5, 30), cy + u(35, 55), dome_r_apex - u(30, 45)),
        (u(45, 65), u(28, 40), u(28, 38)),
        where=liver_space,
    )
    # Stomach under the left dome, with its gas bubble on top (the patient lies supine).
    stomach_center = (cx + LEFT * u(35, 55), cy + u(10, 30), dome_l_apex - u(35, 50))
    painter.ellipsoid("stomach", stomach_center, (u(28, 38), u(24, 32), u(32, 42)), where=below_dome)
    painter.gas_level = (LABEL_IDS["stomach"], stomach_center[1] + u(10, 22))

    # Spleen: posterolateral under the left dome, against the wall and behind the stomach; it stays out of the
    # retroperitoneum, so it never touches the aorta or the vertebrae in a narrow trunk.
    painter.ellipsoid(
        "spleen",
        (cx + LEFT * (a.mean() - fat_side - wall - u(36, 44)), cy - u(0, 15), dome_l_apex - u(35, 50)),
        (u(24, 30), u(46, 56), u(40, 50)),
        rotation=_rotation_z(LEFT * u(0.3, 0.6)),
        where=below_dome & ~retroperitoneum,
    )

    # Kidneys lie beside L1-L2, the right one lower, their poles tilted towards the spine.
    for side, name in ((LEFT, "kidney_left"), (RIGHT, "kidney_right")):
        kz = (level_z["L1"] + level_z["L2"]) / 2 + (-u(0, 15) if side == LEFT else -u(5, 25))
        kx = xs + side * u(55, 68)
        ky = yb + u(-8, 6)
        rotation = _rotation_y(side * u(0.1, 0.3)) @ _rotation_z(side * u(0.3, 0.6))
        semi_axes = (u(24, 30), u(20, 25), u(44, 54))
        # perirenal fat (inside Gerota's fascia) parts the kidney from the spleen, liver and bowel around it
        capsule = tuple(semi + PERIRENAL_FAT_MM for semi in semi_axes)
        painter.ellipsoid("torso_fat", (kx, ky, kz), capsule, rotation=rotation, where=cavity)
        painter.ellipsoid(name, (kx, ky, kz), semi_axes, rotation=rotation)
        # renal sinus fat opens towards the hilum, medially
        painter.ellipsoid(
            "torso_fat",
            (kx - side * u(16, 20), ky + 4, kz),
            (u(9, 12), u(7, 9), u(16, 22)),
            rotation=rotation,
        )

    # Back muscles beside the spine, behind the cavity; psoas from T12 down, growing caudally.
    for side, name in ((LEFT, "autochthon_left"), (RIGHT, "autochthon_right")):
        zz = np.clip((z - level_z["T12"]) / top, -1, 1)
        semi_x = u(22, 28) * (1 - 0.35 * np.clip(zz, 0, 1))
        semi_y = u(20, 26) * (1 - 0.35 * np.clip(zz, 0, 1))
        ax = xs + side * u(26, 32)
        ay = y_canal - u(10, 16)
        mask = (((x - ax) / semi_x) ** 2 + ((y - ay) / semi_y) ** 2 <= 1) & (muscle_outer <= 1) & ~cavity
        painter.paint(np.s_[:, :, :], mask, name)
    psoas_top = level_z["T12"] + u(-5, 10)
    for side, name in ((LEFT, "iliopsoas_left"), (RIGHT, "iliopsoas_right")):
        radius = np.clip((psoas_top - z) / (psoas_top - level_z["L4"]), 0, 1) * u(16, 22)
        px = xs + side * (u(24, 30) + 0.5 * radius)
        mask = ((x - px) ** 2 + (y - (yb + u(-2, 6))) ** 2 <= radius**2) & (z < psoas_top)
        painter.paint(np.s_[:, :, :], mask & cavity, name)

    # Great vessels: the aorta left-anterior of the spine, moving beside it in the thorax; the IVC on the right.
    t = np.clip((z - (dome_l_apex - 20)) / 50, 0, 1)
    ra = u(10, 13)
    ax = xs + LEFT * (u(10, 16) + t * u(8, 14))
    ay = yb + SPINE_HALF_DEPTH + ra + 3 - t * u(14, 22)
    painter.paint(np.s_[:, :, :], (x - ax) ** 2 + (y - ay) ** 2 <= ra**2, "aorta")
    ivc = (
        ((x - (xs + RIGHT * u(22, 28))) / u(11, 14)) ** 2
        + ((y - (yb + SPINE_HALF_DEPTH + u(12, 18))) / u(8, 10)) ** 2
        <= 1
    ) & (z < dome_r_apex - 10)
    painter.paint(np.s_[:, :, :], ivc & cavity, "inferior_vena_cava")

    _paint_spine(painter, vertebrae, xs, yb, canal_r)
    _paint_ribs(painter, vertebrae, xs, cx, cy, a, b_front, cavity_back, fat_side, fat_front, wall)

    # A CT table under the patient, not labelled: a realistic high-contrast distractor.
    table_y = cy - b_back - u(4, 12)
    painter.table = np.broadcast_to((y < table_y) & (y > table_y - u(6, 10)) & (np.abs(x) < 220), grid.shape)


def _paint_spine(painter: _Painter, vertebrae: list[_Vertebra], xs: float, yb: float, canal_r: float) -> None:
    grid, u = painter.grid, painter.uniform
    sp_len = u(24, 34)  # one length for all spinous processes keeps sloping neighbours apart
    for lower, upper in zip(vertebrae[:-1], vertebrae[1:], strict=True):
        rx, ry = (lower.rx + upper.rx) / 2, (lower.ry + upper.ry) / 2
        box = grid.box((xs - rx, yb - ry, lower.z1), (xs + rx, yb + ry, upper.z0))
        if box is not None:
            sl, x, y, z = box
            painter.paint(sl, ((x - xs) / rx) ** 2 + ((y - yb) / ry) ** 2 <= 1, "intervertebral_discs")
    for v in vertebrae:
        h = v.z1 - v.z0
        box = grid.box((xs - 60, yb - 80, v.z0 - 0.6 * h), (xs + 60, yb + v.ry, v.z1))
        if box is None:
            continue
        sl, x, y, z = box
        dx, dy = x - xs, y - yb
        in_height = (z >= v.z0) & (z <= v.z1)
        body = (dx / v.rx) ** 2 + (dy / v.ry) ** 2 <= 1
        y_canal = yb - v.ry - canal_r + 2
        r_canal = np.hypot(dx, y - y_canal)
        arch_height = (z >= v.z0 + 0.08 * h) & (z <= v.z1 - 0.05 * h)
        arch = (r_canal > canal_r) & (r_canal <= canal_r + u(5, 6.5)) & (y < yb - v.ry + 4) & arch_height
        # spinous process: posterior, sloping caudally in the thoracic spine
        depth = np.clip((y_canal - canal_r - y) / sp_len, 0, None)
        sp_z = z + depth * v.spinous_drop * h
        spinous = (
            (np.abs(dx) <= u(3.0, 4.5))
            & (y < y_canal - canal_r)
            & (depth <= 1)
            & (sp_z >= v.z0 + 0.2 * h)
            & (sp_z <= v.z1 - 0.15 * h)
        )
        # transverse processes: lateral, angled backwards in the thoracic spine
        tp_len = u(30, 36) if v.thoracic else u(34, 42)
        tp_y = y_canal + (-0.35 if v.thoracic else 0.05) * (np.abs(dx) - canal_r)
        transverse = (
            (np.abs(dx) >= canal_r)
            & (np.abs(dx) <= tp_len)
            & (np.abs(y - tp_y) <= u(4.0, 5.5))
            & (z >= v.z0 + 0.25 * h)
            & (z <= v.z1 - 0.2 * h)
        )
        bone = (body & in_height) | arch | spinous | transverse
        painter.paint(sl, bone, v.name)
        painter.bone_cortex_candidates[sl] |= bone
    box = grid.box((xs - canal_r, -1e4, -1e4), (xs + canal_r, 1e4, 1e4))
    if box is not None:
        sl, x, y, z = box
        cord = np.zeros(painter.labels[sl].shape, dtype=bool)
        for v in vertebrae:
            y_canal = yb - v.ry - canal_r + 2
            cord |= (
                ((x - xs) ** 2 + (y - y_canal) ** 2 <= (canal_r - 0.5) ** 2)
                & (z >= v.z0 - 12)
                & (z <= v.z1 + 12)
            )
        painter.paint(sl, cord, "spinal_cord")


def _paint_ribs(
    painter: _Painter,
    vertebrae: list[_Vertebra],
    xs: float,
    cx: float,
    cy: float,
    a: np.ndarray,
    b_front: np.ndarray,
    cavity_back: float,
    fat_side: float,
    fat_front: float,
    wall: float,
) -> None:
    """Ribs 8-12 run from their thoracic vertebra around the chest wall, dropping as they go forward."""
    grid, u = painter.grid, painter.uniform
    by_level = {v.name.removeprefix("vertebrae_T"): v for v in vertebrae if v.thoracic}
    # The rib ring lies mid-way through the chest wall at the sides and front and just behind the cavity
    # at the back, in front of the back muscles: an ellipse around the body's centre.
    ring_a = float(np.mean(a)) - fat_side - wall / 2
    ring_front = float(np.mean(b_front)) - fat_front - wall / 2
    ring_back = cavity_back + u(3, 6)
    x, y, z = grid.x[:, None, None], grid.y[None, :, None], grid.z[None, None, :]
    for number in RIB_NUMBERS:
        v = by_level[str(number)]
        z_start = (v.z0 + v.z1) / 2 + u(-2, 2)
        end_angle = {8: 2.75, 9: 2.6, 10: 2.45, 11: 2.0, 12: 1.6}[number] + u(-0.1, 0.1)
        drop = {8: 55, 9: 58, 10: 55, 11: 35, 12: 25}[number] * u(0.85, 1.15)
        half_h, half_w = u(5.5, 7.0), u(4.0, 5.0)
        zlo, zhi = z_start - drop - 2 * half_h, z_start + 2 * half_h
        zsel = (grid.z >= zlo) & (grid.z <= zhi)
        if not zsel.any():
            continue
        zs = np.flatnonzero(zsel)
        sl_z = slice(zs[0], zs[-1] + 1)
        zz = z[:, :, sl_z]
        for side, prefix in ((LEFT, "rib_left_"), (RIGHT, "rib_right_")):
            dx = (x - cx) * side
            dy = y - cy
            ring_b = np.where(dy >= 0, ring_front, ring_back)
            # angle from the back (0) over the flank (pi/2) to the front (pi), on the ellipse
            angle = np.arctan2(dx / ring_a, -dy / ring_b)
            start_angle = float(np.arcsin(np.clip((abs(xs - cx) + 38) / ring_a, 0, 1)))
            progress = (angle - start_angle) / (end_angle - start_angle)
            ring_r = np.hypot(ring_a * np.sin(angle), ring_b * np.cos(angle))
            radial = np.hypot(dx, dy) - ring_r
            z_center = z_start - drop * np.clip(progress, 0, 1) ** 1.3
            inside = (progress >= 0) & (progress <= 1)
            mask = inside & ((radial / half_w) ** 2 + ((zz - z_center) / half_h) ** 2 <= 1)
            sl = (slice(None), slice(None), sl_z)
            painter.paint(sl, mask, f"{prefix}{number}")
            painter.bone_cortex_candidates[sl] |= mask


def _smooth_field(rng: np.random.Generator, grid: _Grid, sigma_mm: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``sigma_mm``."""
    coarse_step = max(1, int(sigma_mm / max(grid.spacing) / 1.5))
    coarse_shape = tuple(-(-n // coarse_step) + 1 for n in grid.shape)
    sigma = [sigma_mm / (s * coarse_step) for s in grid.spacing]
    field = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), sigma, mode="wrap")
    field = ndimage.zoom(field, coarse_step, order=1)[: grid.shape[0], : grid.shape[1], : grid.shape[2]]
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _render_ct(painter: _Painter, hu: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    grid, labels = painter.grid, painter.labels
    lut = np.full(256, hu["air"], dtype=np.float32)
    for label, name in CLASS_NAMES.items():
        lut[label] = hu[_TISSUE_OF_CLASS.get(name, name)]
    ct = lut[labels]
    ct[painter.table & (labels == 0)] = hu["table"]

    # Tissue texture: gentle parenchymal variation everywhere, vessels in the lungs, gas in the bowel.
    texture = _smooth_field(rng, grid, sigma_mm=6.0)
    body = labels > 0
    ct += np.where(body, texture * rng.uniform(4, 9), 0).astype(np.float32)
    lungs = (labels == LABEL_IDS["lung_left"]) | (labels == LABEL_IDS["lung_right"])
    vessels = _smooth_field(rng, grid, sigma_mm=3.5)
    ct[lungs] += 700 * np.clip(vessels[lungs] - 1.3, 0, None)
    bowel = labels == LABEL_IDS["small_bowel"]
    gas = bowel & (_smooth_field(rng, grid, sigma_mm=5.0) > rng.uniform(0.6, 1.2))
    ct[gas] = GAS_HU
    if painter.gas_level is not None:
        label, level = painter.gas_level
        ct[(labels == label) & (grid.y[None, :, None] > level)] = GAS_HU

    # Bone: dense cortex on the outer shell, cancellous inside.
    bone = painter.bone_cortex_candidates
    cortex = bone & ~ndimage.binary_erosion(bone)
    ct[cortex] += rng.normal(*CORTEX_BOOST_HU)

    # Partial volume: the scanner's point-spread function together with the voxel footprint (sigma 1.2-1.8 mm),
    # so boundary voxels mix their neighbours' HU.
    psf_sigma = [rng.uniform(1.2, 1.8) / s for s in grid.spacing]
    ct = ndimage.gaussian_filter(ct, psf_sigma, truncate=3.0)

    # Smooth inhomogeneity: cupping towards the body centre plus a random low-frequency drift.
    x, y = grid.x[:, None, None], grid.y[None, :, None]
    r2 = (x / 170.0) ** 2 + (y / 130.0) ** 2
    ct += np.where(body, -rng.uniform(0, 18) * np.clip(1 - r2, 0, 1), 0).astype(np.float32)
    ct += (_smooth_field(rng, grid, sigma_mm=60.0) * rng.uniform(3, 10)).astype(np.float32)

    # Correlated noise with an FBP-like spectrum: little power at the lowest frequencies, peak mid-band.
    white = rng.standard_normal(grid.shape).astype(np.float32)
    fine = ndimage.gaussian_filter(white, 0.7, truncate=3.0)
    coarse = ndimage.gaussian_filter(fine, 1.6, truncate=3.0)
    noise = fine - 0.7 * coarse
    noise *= rng.uniform(12, 28) / max(float(noise.std()), 1e-6)
    ct += noise
    np.clip(ct, -1024, 3071, out=ct)
    return ct.astype(np.float32, copy=False)
