"""The Slicer markups file: its shape checked against the fields schema v1.0.3 defines."""

import json

import numpy as np
import pytest

from optimizer.evaluate.markups import SLICER_MARKUPS_SCHEMA, needle_markups, write_needle_markups

from .builders import two_needle_plan

# From Slicer's Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json.
TOP_REQUIRED = ("@schema", "markups")
MARKUP_REQUIRED = ("type",)
MARKUP_TYPES = ("Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI")
COORDINATE_SYSTEMS = ("LPS", "RAS")
COORDINATE_UNITS = ("mm", "um")
MARKUP_PROPERTY_TYPES = {
    "type": str, "name": str, "coordinateSystem": str, "coordinateUnits": str, "locked": bool,
    "fixedNumberOfControlPoints": bool, "labelFormat": str, "controlPoints": list,
    "measurements": list, "display": dict,
}  # fmt: skip
POINT_PROPERTY_TYPES = {
    "id": str, "label": str, "description": str, "associatedNodeID": str, "position": list,
    "orientation": list, "selected": bool, "locked": bool, "visibility": bool,
    "positionStatus": str,
}  # fmt: skip
POSITION_STATUS = ("undefined", "preview", "defined")
MEASUREMENT_PROPERTY_TYPES = {
    "name": str, "enabled": bool, "value": (int, float), "units": str, "printFormat": str,
}  # fmt: skip


def is_number(x):
    return isinstance(x, int | float) and not isinstance(x, bool)


def validate(doc):
    """The schema's required keys, enums, types and array lengths (no network, no library)."""
    for key in TOP_REQUIRED:
        assert key in doc, key
    assert isinstance(doc["@schema"], str) and isinstance(doc["markups"], list)
    for markup in doc["markups"]:
        for key in MARKUP_REQUIRED:
            assert key in markup
        for key, kind in MARKUP_PROPERTY_TYPES.items():
            if key in markup:
                assert isinstance(markup[key], kind), key
        assert markup["type"] in MARKUP_TYPES
        assert markup.get("coordinateSystem", "LPS") in COORDINATE_SYSTEMS
        assert markup.get("coordinateUnits", "mm") in COORDINATE_UNITS
        for point in markup.get("controlPoints", []):
            for key, kind in POINT_PROPERTY_TYPES.items():
                if key in point:
                    assert isinstance(point[key], kind), key
            assert len(point["position"]) == 3 and all(map(is_number, point["position"]))
            assert len(point["orientation"]) == 9 and all(map(is_number, point["orientation"]))
            assert point.get("positionStatus", "defined") in POSITION_STATUS
        for m in markup.get("measurements", []):
            for key, kind in MEASUREMENT_PROPERTY_TYPES.items():
                if key in m:
                    assert isinstance(m[key], kind), key
        display = markup.get("display", {})
        for key in ("color", "selectedColor", "activeColor"):
            if key in display:
                assert len(display[key]) == 3 and all(0 <= c <= 1 for c in display[key])
        if "opacity" in display:
            assert 0 <= display["opacity"] <= 1


def test_one_ras_line_per_needle_along_its_exposed_segment():
    plan = two_needle_plan(spacing_mm=12.0, exposure_mm=15.0)
    doc = needle_markups(plan)
    validate(doc)
    assert doc["@schema"] == SLICER_MARKUPS_SCHEMA and SLICER_MARKUPS_SCHEMA.endswith(
        "markups-schema-v1.0.3.json#"
    )
    assert len(doc["markups"]) == 2
    for index, (markup, needle) in enumerate(zip(doc["markups"], plan.to_needles(), strict=True)):
        assert markup["type"] == "Line" and markup["coordinateSystem"] == "RAS"
        start, tip = markup["controlPoints"]
        assert np.allclose(start["position"], needle.exposed_start_mm)
        assert np.allclose(tip["position"], needle.tip_mm)
        assert f"N{index}" in tip["label"] and needle.hole in tip["label"]
        assert markup["measurements"][0]["value"] == pytest.approx(15.0)


def test_written_file_is_the_same_json(tmp_path):
    plan = two_needle_plan()
    path = write_needle_markups(plan, tmp_path / "needles.mrk.json")
    loaded = json.loads(path.read_text())
    validate(loaded)
    assert loaded == needle_markups(plan)


def test_the_validator_catches_a_wrong_document():
    doc = needle_markups(two_needle_plan())
    doc["markups"][0]["coordinateSystem"] = "XYZ"
    with pytest.raises(AssertionError):
        validate(doc)
