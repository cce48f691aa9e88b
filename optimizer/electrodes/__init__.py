"""Needle electrodes: geometry, the transperineal template, insertion paths, voxelisation."""

from optimizer.electrodes.needle import NEEDLE_19G_DIAMETER_MM, Needle, NeedleError
from optimizer.electrodes.paths import (
    HoleReach,
    NeedlePathError,
    Obstacles,
    PathCheck,
    admissible_holes,
    check_path,
    hole_reach,
    require_clear_path,
)
from optimizer.electrodes.template import Hole, Template, TemplateError
from optimizer.electrodes.voxelise import NeedleOutsideGridError, NeedleVoxels, voxelise

__all__ = [
    "NEEDLE_19G_DIAMETER_MM",
    "Hole",
    "HoleReach",
    "Needle",
    "NeedleError",
    "NeedleOutsideGridError",
    "NeedlePathError",
    "NeedleVoxels",
    "Obstacles",
    "PathCheck",
    "Template",
    "TemplateError",
    "admissible_holes",
    "check_path",
    "hole_reach",
    "require_clear_path",
    "voxelise",
]
