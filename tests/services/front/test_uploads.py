"""Uploads: a 256^3 label map in chunks, content addressing, every encoding round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.anatomy.grid import VoxelGrid
from optimizer.anatomy.structures import Anatomy, Structure
from services.front.client import FrontClient
from services.front.server import BackgroundServer
from services.front.uploads import encode_anatomy


def big_anatomy(n: int = 256) -> Anatomy:
    """A 256^3 grid (0.5 mm, oblique) with a gland, a lesion inside it and a rectum."""
    c, s = np.cos(0.2), np.sin(0.2)
    affine = np.eye(4)
    affine[:3, :3] = 0.5 * np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    affine[:3, 3] = [-64.0, -60.0, -70.0]
    grid = VoxelGrid((n, n, n), affine)
    i, j, k = np.ogrid[:n, :n, :n]
    gland = ((i - 128) ** 2 + (j - 128) ** 2 + (k - 128) ** 2) <= 60**2
    lesion = ((i - 150) ** 2 + (j - 110) ** 2 + (k - 128) ** 2) <= 12**2
    rectum = (j > 200) & (j < 230) & (np.abs(i - 128) < 30) & np.ones((1, 1, n), dtype=bool)
    structures = [
        Structure.from_name("prostate", gland & ~lesion)[0],
        Structure.from_name("lesion", lesion)[0],
        Structure.from_name("rectum", rectum)[0],
    ]
    return Anatomy(grid, structures, case_id="big")


def test_a_256_cubed_label_map_uploads_in_chunks(front: BackgroundServer, client: FrontClient):
    anatomy = big_anatomy()
    header, data = encode_anatomy(anatomy, "label_map_uint8")
    assert len(data) == 256**3
    chunk = 2 * 1024 * 1024  # 8 chunks, each under gRPC's 4 MiB default message limit
    summary = client.upload_raw(header, data, chunk_bytes=chunk, skip_if_stored=False)
    assert list(summary.shape) == [256, 256, 256]
    volumes = {s.name: s.volume_ml for s in summary.structures}
    voxel_ml = 0.125 / 1000
    assert volumes["lesion"] == pytest.approx(anatomy["lesion"].voxel_count() * voxel_ml)
    roles = {s.name: s.role for s in summary.structures}
    assert roles == {"prostate": "target", "lesion": "target", "rectum": "organ_at_risk"}
    # What the server stored decodes to the same masks on the same grid.
    assert front.front is not None
    stored = front.front.anatomies.load(summary.anatomy_id)
    assert stored.grid.same_as(anatomy.grid)
    for s in anatomy:
        assert np.array_equal(stored[s.name].mask, s.mask)
    # Content-addressed: the same content again is recognised, before and during an upload.
    again = client.upload_raw(header, data, chunk_bytes=chunk, skip_if_stored=False)
    assert again.anatomy_id == summary.anatomy_id
    assert client.get_anatomy(summary.anatomy_id).content_length == len(data)


@pytest.mark.parametrize("encoding", ["label_map_uint8", "label_map_uint16", "packed_masks"])
def test_every_encoding_round_trips(
    front: BackgroundServer, client: FrontClient, phantom, encoding: str
):
    if encoding != "packed_masks":
        # Label maps cannot hold overlaps: keep the phantom's non-overlapping structures.
        taken = np.zeros(phantom.grid.shape, dtype=bool)
        kept = []
        for s in phantom:
            if not (s.mask & taken).any():
                kept.append(s)
                taken |= s.mask
        anatomy = Anatomy(phantom.grid, kept, case_id="phantom")
    else:
        anatomy = phantom
    header, data = encode_anatomy(anatomy, encoding)
    summary = client.upload_raw(header, data, chunk_bytes=100_000)
    assert front.front is not None
    stored = front.front.anatomies.load(summary.anatomy_id)
    for s in anatomy:
        got = stored[s.name]
        assert np.array_equal(got.mask, s.mask)
        assert (got.role, got.tissue, got.kind.name, got.modelled) == (
            s.role,
            s.tissue,
            s.kind.name,
            s.modelled,
        )
