"""Needles as a 3D Slicer markups file (.mrk.json): one Line markup per exposed segment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from optimizer.evaluate.plan import Plan

SLICER_MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
    "Schema/markups-schema-v1.0.3.json#"
)
# Slicer's identity orientation for a control point (row-major 3x3).
_IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
# Needle lines drawn in one colour (RGB 0..1), the tip end a shade darker when selected.
NEEDLE_COLOR = [1.0, 0.85, 0.1]


def needle_label(plan: Plan, index: int) -> str:
    needle = plan.needles[index]
    return f"N{index}" + (f" ({needle.hole})" if needle.hole else "")


def _point(point_id: str, label: str, description: str, position: list[float]) -> dict[str, Any]:
    return {
        "id": point_id,
        "label": label,
        "description": description,
        "associatedNodeID": "",
        "position": position,
        "orientation": list(_IDENTITY),
        "selected": True,
        "locked": True,
        "visibility": True,
        "positionStatus": "defined",
    }


def needle_markups(plan: Plan) -> dict[str, Any]:
    """The markups document: RAS mm, one Line per needle from exposure start to tip."""
    markups = []
    for i, n in enumerate(plan.needles):
        needle = n.to_needle()
        start, tip = needle.exposed_segment()
        label = needle_label(plan, i)
        markups.append(
            {
                "type": "Line",
                "name": label,
                "coordinateSystem": "RAS",
                "coordinateUnits": "mm",
                "locked": True,
                "fixedNumberOfControlPoints": True,
                "labelFormat": "%N-%d",
                "lastUsedControlPointNumber": 2,
                "controlPoints": [
                    _point(
                        "1",
                        f"{label} exposure start",
                        "insulated-to-exposed transition",
                        [float(x) for x in start],
                    ),
                    _point(
                        "2",
                        f"{label} tip",
                        f"exposure {n.exposure_mm:g} mm, diameter {n.diameter_mm:g} mm",
                        [float(x) for x in tip],
                    ),
                ],
                "measurements": [
                    {
                        "name": "length",
                        "enabled": True,
                        "value": float(n.exposure_mm),
                        "units": "mm",
                        "printFormat": "%-#4.4g%s",
                    }
                ],
                "display": {
                    "visibility": True,
                    "opacity": 1.0,
                    "color": list(NEEDLE_COLOR),
                    "selectedColor": list(NEEDLE_COLOR),
                    "propertiesLabelVisibility": True,
                    "pointLabelsVisibility": False,
                    "lineThickness": 0.2,
                },
            }
        )
    return {"@schema": SLICER_MARKUPS_SCHEMA, "markups": markups}


def write_needle_markups(plan: Plan, path: str | Path) -> Path:
    """Write ``needle_markups(plan)`` as JSON; Slicer reads files named ``*.mrk.json``."""
    out = Path(path)
    out.write_text(json.dumps(needle_markups(plan), indent=2) + "\n")
    return out
