"""Named structures on one voxel grid, and the tissue map their overlaps resolve into."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from optimizer.anatomy.errors import AnatomyError, GridMismatchError, MissingTargetError
from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.kinds import Kind, Role, kind_for, structure_kinds

BoolArray = npt.NDArray[np.bool_]

# Voxels no structure claims are soft tissue (fat-like periprostatic tissue).
BACKGROUND_TISSUE = "fat"


@dataclass(eq=False)
class Structure:
    """A boolean mask on the anatomy's grid with what it means.

    ``modelled`` is True for organs ectplan generated (not segmented); every output says so.
    """

    name: str
    mask: BoolArray = field(repr=False)
    kind: Kind
    role: Role
    tissue: str
    modelled: bool = False
    source: str = ""

    @classmethod
    def from_name(
        cls,
        name: str,
        mask: npt.ArrayLike,
        *,
        role: Role | str | None = None,
        tissue: str | None = None,
        kind: str | None = None,
        modelled: bool = False,
        source: str = "",
    ) -> tuple[Structure, bool]:
        """Build from a name, filling role and tissue from the kind table.

        Returns (structure, recognised) where recognised is False for names that matched no
        kind (they become soft tissue and the caller reports them).
        """
        if kind is not None:
            try:
                k, recognised = structure_kinds()[kind], True
            except KeyError:
                known = ", ".join(structure_kinds())
                raise AnatomyError(
                    f"structure {name!r}: unknown kind {kind!r}; use one of {known}"
                ) from None
        else:
            k, recognised = kind_for(name)
        try:
            r = Role(role) if role is not None else k.role
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise AnatomyError(
                f"structure {name!r}: unknown role {role!r}; use one of {roles}"
            ) from None
        m = np.asarray(mask).astype(bool, copy=False)
        return (
            cls(
                name=name,
                mask=m,
                kind=k,
                role=r,
                tissue=tissue or k.tissue,
                modelled=modelled,
                source=source,
            ),
            recognised or role is not None,
        )

    @property
    def priority(self) -> int:
        return self.kind.priority

    @property
    def blocks_needles(self) -> bool:
        return self.kind.blocks_needles

    def voxel_count(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass(eq=False)
class Anatomy:
    """A case: grid, structures, an optional image, and what was noticed while loading it."""

    grid: VoxelGrid
    structures: list[Structure]
    case_id: str = "case"
    source: str = ""
    image: npt.NDArray[np.floating] | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for s in self.structures:
            if s.mask.shape != self.grid.shape:
                raise GridMismatchError(
                    f"structure {s.name!r} has shape {s.mask.shape} but the grid is "
                    f"{self.grid.shape}; resample it onto the case's image grid first"
                )
        if self.image is not None and self.image.shape != self.grid.shape:
            raise GridMismatchError(
                f"image shape {self.image.shape} differs from the grid {self.grid.shape}"
            )
        names = [s.name for s in self.structures]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise AnatomyError(f"structure names must be unique; repeated: {', '.join(dupes)}")

    def __iter__(self) -> Iterator[Structure]:
        return iter(self.structures)

    def __getitem__(self, name: str) -> Structure:
        for s in self.structures:
            if s.name == name:
                return s
        raise KeyError(f"no structure {name!r}; have {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [s.name for s in self.structures]

    def with_role(self, role: Role) -> list[Structure]:
        return [s for s in self.structures if s.role == role]

    def of_kind(self, kind: str) -> list[Structure]:
        return [s for s in self.structures if s.kind.name == kind]

    @property
    def modelled_structures(self) -> list[str]:
        return [s.name for s in self.structures if s.modelled]

    def target_mask(self) -> BoolArray:
        """Union of all target structures (lesions need not lie inside the gland)."""
        targets = self.with_role(Role.TARGET)
        if not targets:
            raise MissingTargetError(
                f"case {self.case_id!r} has no target structure (lesion, GTV, gland or "
                "prostate); name one by file stem or mark one with role 'target' in anatomy.json"
            )
        mask = np.zeros(self.grid.shape, dtype=bool)
        for s in targets:
            mask |= s.mask
        if not mask.any():
            raise MissingTargetError(
                f"case {self.case_id!r}: target structures "
                f"{', '.join(s.name for s in targets)} are empty"
            )
        return mask

    def needle_blocking_mask(self) -> BoolArray:
        mask = np.zeros(self.grid.shape, dtype=bool)
        for s in self.structures:
            if s.blocks_needles:
                mask |= s.mask
        return mask

    def winner_map(self) -> npt.NDArray[np.int16]:
        """Per voxel the index of the structure that wins it (-1 where none claims it).

        Higher kind priority wins; among equals the structure listed first wins. Body and
        helper structures never override a real organ because their priorities are lowest.
        """
        winner = np.full(self.grid.shape, -1, dtype=np.int16)
        best = np.full(self.grid.shape, -1, dtype=np.int32)
        for index, s in enumerate(self.structures):
            take = s.mask & (s.priority > best)
            winner[take] = index
            best[take] = s.priority
        return winner

    def tissue_map(self, tissue_names: Iterable[str]) -> npt.NDArray[np.int16]:
        """Per-voxel index into ``tissue_names``; unclaimed voxels get BACKGROUND_TISSUE."""
        names = list(tissue_names)
        lookup = {n: i for i, n in enumerate(names)}
        for t in {s.tissue for s in self.structures} | {BACKGROUND_TISSUE}:
            if t not in lookup:
                raise AnatomyError(f"tissue {t!r} is not in the tissue table ({', '.join(names)})")
        winner = self.winner_map()
        per_structure = np.array(
            [lookup[s.tissue] for s in self.structures] + [lookup[BACKGROUND_TISSUE]],
            dtype=np.int16,
        )
        # winner == -1 indexes the appended background entry.
        return per_structure[winner]

    def structure_table(self) -> list[dict[str, object]]:
        """What each structure is, its volume, and how much of it won the overlap resolution."""
        winner = self.winner_map()
        ml = self.grid.voxel_volume_ml
        rows: list[dict[str, object]] = []
        for index, s in enumerate(self.structures):
            total = s.voxel_count()
            won = int(np.count_nonzero(winner == index))
            rows.append(
                {
                    "name": s.name,
                    "kind": s.kind.name,
                    "role": s.role.value,
                    "tissue": s.tissue,
                    "priority": s.priority,
                    "modelled": s.modelled,
                    "volume_ml": total * ml,
                    "won_volume_ml": won * ml,
                    "lost_to_overlap_ml": (total - won) * ml,
                    "source": s.source,
                }
            )
        return rows
