"""Anatomy: voxel grids, named structures with roles and tissues, readers, model organs."""

from optimizer.anatomy.errors import AnatomyError
from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.kinds import Role
from optimizer.anatomy.structures import Anatomy, Structure

__all__ = ["Anatomy", "AnatomyError", "Role", "Structure", "VoxelGrid"]
