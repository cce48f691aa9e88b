"""The JSON a user may put beside their masks (anatomy.json) and label tables, validated.

The format is documented in docs/anatomy_input.md; messages name the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from optimizer.anatomy.errors import LabelError, UnreadableFileError
from optimizer.anatomy.kinds import Role, structure_kinds

ANATOMY_JSON = "anatomy.json"


def _check_kind(kind: str) -> str:
    if kind not in structure_kinds():
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(structure_kinds())}")
    return kind


KindName = Annotated[str, AfterValidator(_check_kind)]


class LabelSpec(BaseModel):
    """What one label value of a file means."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: KindName | None = None
    role: Role | None = None
    tissue: str | None = None


def _label_mapping(value: Any) -> Any:
    # A bare string is shorthand for {"name": ...}.
    if isinstance(value, dict):
        return {k: {"name": v} if isinstance(v, str) else v for k, v in value.items()}
    return value


def _no_background(labels: dict[int, LabelSpec]) -> dict[int, LabelSpec]:
    if not labels:
        raise ValueError("label table is empty")
    if 0 in labels:
        raise ValueError("label value 0 is background and cannot name a structure")
    names = [spec.name for spec in labels.values()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"label names must be unique; repeated: {', '.join(repeated)}")
    return labels


LabelMap = Annotated[
    dict[int, LabelSpec], BeforeValidator(_label_mapping), AfterValidator(_no_background)
]


class FileSpec(BaseModel):
    """One mask file: a single structure (name/kind/role/tissue/inside) or a label table."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1)
    kind: KindName | None = None
    role: Role | None = None
    tissue: str | None = None
    inside: list[int] | None = Field(default=None, min_length=1)
    labels: LabelMap | None = None
    ignore: bool = False

    @field_validator("inside")
    @classmethod
    def _inside_not_background(cls, inside: list[int] | None) -> list[int] | None:
        if inside is not None and 0 in inside:
            raise ValueError("0 is background; list only the values that count as inside")
        return inside

    @model_validator(mode="after")
    def _labels_exclusive(self) -> FileSpec:
        single = [f for f in ("name", "kind", "role", "tissue", "inside") if getattr(self, f)]
        if self.labels is not None and single:
            raise ValueError(
                f"give either 'labels' (one structure per value) or {', '.join(single)} "
                "(one structure), not both"
            )
        return self


class AnatomySpec(BaseModel):
    """anatomy.json: which file is the image and what each mask file holds."""

    model_config = ConfigDict(extra="forbid")

    case_id: str | None = Field(default=None, min_length=1)
    image: str | None = None
    files: dict[str, FileSpec] = Field(default_factory=dict)

    @property
    def image_given(self) -> bool:
        """True when the JSON says which file is the image (null meaning: none)."""
        return "image" in self.model_fields_set


class LabelTableSpec(BaseModel):
    """A label-map table in JSON: {"labels": {"1": "gland", "2": {...}}} or the bare mapping."""

    model_config = ConfigDict(extra="forbid")

    labels: LabelMap


def describe_validation_error(exc: ValidationError, where: Path) -> str:
    """One line per problem: '<file>: files -> a.nii.gz -> role: Input should be ...'."""
    lines = []
    for err in exc.errors():
        loc = " -> ".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{where}: {loc}: {err['msg']}")
    return "\n".join(lines)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UnreadableFileError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UnreadableFileError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None


def read_anatomy_spec(path: Path) -> AnatomySpec:
    """Parse and validate anatomy.json; raises LabelError listing every problem found."""
    raw = read_json(path)
    try:
        return AnatomySpec.model_validate(raw)
    except ValidationError as exc:
        raise LabelError(
            describe_validation_error(exc, path) + "\nsee docs/anatomy_input.md for the format"
        ) from None


def parse_label_table_json(raw: Any, path: Path) -> dict[int, LabelSpec]:
    if isinstance(raw, dict) and "labels" not in raw:
        raw = {"labels": raw}
    try:
        return LabelTableSpec.model_validate(raw).labels
    except ValidationError as exc:
        raise LabelError(
            describe_validation_error(exc, path) + "\nsee docs/anatomy_input.md for the format"
        ) from None
