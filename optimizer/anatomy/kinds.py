"""Structure kinds: name -> (role, tissue, overlap priority), from data/structures.toml."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources


class Role(StrEnum):
    TARGET = "target"
    ORGAN_AT_RISK = "organ_at_risk"
    AVOID = "avoid"
    BODY = "body"
    HELPER = "helper"


@dataclass(frozen=True)
class Kind:
    name: str
    role: Role
    tissue: str
    priority: int
    blocks_needles: bool
    synonyms: tuple[str, ...]


UNKNOWN_KIND = "soft_tissue"


@cache
def structure_kinds() -> dict[str, Kind]:
    text = resources.files("optimizer.anatomy").joinpath("data/structures.toml").read_text()
    raw = tomllib.loads(text)["kind"]
    return {
        name: Kind(
            name=name,
            role=Role(entry["role"]),
            tissue=str(entry["tissue"]),
            priority=int(entry["priority"]),
            blocks_needles=bool(entry["blocks_needles"]),
            synonyms=tuple(s.lower() for s in entry["synonyms"]),
        )
        for name, entry in raw.items()
    }


def _tokens(name: str) -> list[str]:
    # Split camelCase too, so "RectalWall" and "rectal_wall" read alike.
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    return [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]


def match_kind(name: str) -> Kind | None:
    """The kind a structure name denotes, or None when nothing matches.

    Phrases win over single tokens ("bladder lumen" is urine, not bladder); among equally long
    matches the higher-priority kind wins ("csPCa lesions in gland" is a lesion).
    """
    tokens = _tokens(name)
    joined = " ".join(tokens)
    best: tuple[int, int, Kind] | None = None
    for kind in structure_kinds().values():
        for synonym in kind.synonyms:
            words = synonym.split()
            hit = f" {synonym} " in f" {joined} " or (len(words) > 1 and "".join(words) in tokens)
            if hit:
                score = (len(words), kind.priority, kind)
                if best is None or score[:2] > best[:2]:
                    best = score
    return None if best is None else best[2]


def kind_for(name: str) -> tuple[Kind, bool]:
    """(kind, recognised): unknown names become soft tissue, flagged so callers report them."""
    kind = match_kind(name)
    if kind is None:
        return structure_kinds()[UNKNOWN_KIND], False
    return kind, True
