"""A seeded synthetic prostate case for tests and demos when no real data is present.

The gland is an ellipsoid of 35-45 ml (volume, proportions and sagittal tilt drawn from the
seed), the lesion a smaller ellipsoid placed from the gland centre towards its surface
(mostly posterior, where most cancers arise in the peripheral zone; sometimes poking out of
the capsule). The organs at risk are the model organs of ``model_organs`` placed around that
gland by the same code that serves real cases, so the phantom has no geometry of its own.

The grid can be oblique (tilted about the R-L axis like real axial stacks) and anisotropic;
the anatomy in world coordinates does not depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from optimizer.anatomy.errors import AnatomyError, GridTooLargeError
from optimizer.anatomy.grid import MAX_VOXELS, VoxelGrid
from optimizer.anatomy.model_organs import (
    Ellipsoid,
    ModelOrganParams,
    add_model_organs,
    rasterise_shape,
)
from optimizer.anatomy.structures import Anatomy, Structure

FloatArray = npt.NDArray[np.float64]

# Shape of the phantom (geometry choices, in mm and ml, not measurements of one patient):
# typical adult gland 30-50 ml; proportions roughly 48 x 35 x 42 mm (R-L x A-P x S-I).
GLAND_VOLUME_ML = (35.0, 45.0)
GLAND_PROPORTIONS = (24.0, 17.5, 21.0)
GLAND_PROPORTION_JITTER = 0.07  # log-normal sigma per semi-axis
GLAND_TILT_DEG = 10.0  # +- sagittal tilt of the gland's long axis
# Where the gland sits in the phantom's box: forward and down, leaving room behind for the
# rectum and above for the bladder.
GLAND_CENTRE_MM = (0.0, 4.0, -8.0)
GLAND_CENTRE_JITTER_MM = 1.5
# Lesion: 0.3-2 ml ellipsoids, centre 35-100 percent of the way to the gland surface, on the
# posterior side three times in four.
LESION_RADIUS_MM = (4.5, 7.5)
LESION_DEPTH_FRACTION = (0.35, 1.0)
LESION_POSTERIOR_PROBABILITY = 0.75


def _rotation_x(degrees: float) -> FloatArray:
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _random_rotation(rng: np.random.Generator) -> FloatArray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return np.asarray(q)


def phantom_grid(
    spacing_mm: float | Sequence[float] = 1.0,
    size_mm: Sequence[float] = (96.0, 96.0, 96.0),
    oblique_deg: float = 0.0,
    max_voxels: int = MAX_VOXELS,
) -> VoxelGrid:
    """A grid centred on the world origin, tilted by ``oblique_deg`` about the R-L axis."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
    size = np.asarray(size_mm, dtype=np.float64)
    if size.shape != (3,) or not np.all(np.isfinite(size)) or np.any(size <= 0):
        raise AnatomyError(f"phantom size_mm must be three positive lengths, got {size_mm}")
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise AnatomyError(f"phantom spacing_mm must be positive, got {spacing_mm}")
    counts = np.maximum(np.round(size / spacing), 1).astype(int)
    shape = (int(counts[0]), int(counts[1]), int(counts[2]))
    if math.prod(shape) > max_voxels:
        raise GridTooLargeError(
            f"phantom grid {shape[0]}x{shape[1]}x{shape[2]} = {math.prod(shape):,} voxels "
            f"exceeds {max_voxels:,}; use a coarser spacing or a smaller size_mm"
        )
    affine = np.eye(4)
    affine[:3, :3] = _rotation_x(oblique_deg) @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((counts - 1) / 2.0)
    return VoxelGrid(shape, affine)


def make_phantom(
    seed: int = 0,
    spacing_mm: float | Sequence[float] = 1.0,
    size_mm: Sequence[float] = (96.0, 96.0, 96.0),
    oblique_deg: float = 0.0,
    *,
    lesion: bool = True,
    organs: bool = True,
    params: ModelOrganParams | None = None,
    case_id: str | None = None,
) -> Anatomy:
    """A synthetic case: gland, lesion and model organs at risk, deterministic for ``seed``.

    Every structure is marked modelled. ``spacing_mm`` may be one number or three (e.g.
    ``(0.5, 0.5, 3.0)`` to mimic a real axial stack); ``oblique_deg`` tilts the grid.
    """
    grid = phantom_grid(spacing_mm, size_mm, oblique_deg)
    rng = np.random.default_rng(seed)
    gland_shape = _gland(rng)
    source = f"phantom: seed={seed}"
    structures = [
        Structure.from_name(
            "prostate", rasterise_shape(gland_shape, grid), modelled=True, source=source
        )[0]
    ]
    description = f"gland {gland_shape.volume_ml():.1f} ml"
    lesion_shape = _lesion(rng, gland_shape)
    if lesion:
        structures.append(
            Structure.from_name(
                "lesion", rasterise_shape(lesion_shape, grid), modelled=True, source=source
            )[0]
        )
        description += f", lesion {lesion_shape.volume_ml():.2f} ml"
    anatomy = Anatomy(
        grid=grid,
        structures=structures,
        case_id=case_id or f"phantom-{seed}",
        source=f"make_phantom(seed={seed})",
        notes=[
            f"synthetic phantom (seed {seed}; analytic {description}): not patient anatomy, "
            "every structure is modelled"
        ],
    )
    if organs:
        anatomy = add_model_organs(anatomy, params)
    return replace(anatomy, structures=[replace(s, modelled=True) for s in anatomy])


def _gland(rng: np.random.Generator) -> Ellipsoid:
    volume_ml = rng.uniform(*GLAND_VOLUME_ML)
    semi = np.asarray(GLAND_PROPORTIONS) * np.exp(rng.normal(0.0, GLAND_PROPORTION_JITTER, 3))
    semi *= (volume_ml * 1000.0 / (4.0 / 3.0 * math.pi * np.prod(semi))) ** (1.0 / 3.0)
    centre = np.asarray(GLAND_CENTRE_MM) + rng.normal(0.0, GLAND_CENTRE_JITTER_MM, 3)
    tilt = rng.uniform(-GLAND_TILT_DEG, GLAND_TILT_DEG)
    return Ellipsoid(centre, semi, _rotation_x(tilt))


def _lesion(rng: np.random.Generator, gland: Ellipsoid) -> Ellipsoid:
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    posterior = rng.uniform() < LESION_POSTERIOR_PROBABILITY
    direction[1] = -abs(direction[1]) if posterior else abs(direction[1])
    depth = rng.uniform(*LESION_DEPTH_FRACTION)
    rotation = np.eye(3) if gland.rotation is None else gland.rotation
    centre = gland.centre + rotation @ (gland.semi_axes * direction * depth)
    semi = rng.uniform(*LESION_RADIUS_MM) * np.exp(rng.normal(0.0, 0.15, 3))
    return Ellipsoid(centre, semi, _random_rotation(rng))
