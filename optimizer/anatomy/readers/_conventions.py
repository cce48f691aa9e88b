"""What a mask file's stem says when no anatomy.json does: image or mask, kind, label table."""

from __future__ import annotations

import re

from optimizer.anatomy.kinds import match_kind

# Stem tokens that mark a scan rather than a mask (t2w_axial_..., ADC, CT, image...).
IMAGE_TOKENS = frozenset(
    {
        "t1",
        "t1w",
        "t2",
        "t2w",
        "adc",
        "dwi",
        "hbv",
        "mri",
        "mr",
        "ct",
        "pet",
        "image",
        "img",
        "scan",
        "flair",
    }
)

# Kinds a case has one of: further files of the same kind are alternative delineations (two AI
# gland models, two zonal maps), kept as helpers. Lesions, bundles, vessels and bones come in
# several, so their files are all kept as they are.
SINGLE_INSTANCE_KINDS = frozenset(
    {"gland", "urethra", "rectum", "bladder", "urine", "zone", "body"}
)

_LABEL_TOKEN = re.compile(r"^([A-Za-z]+)(\d+)$")


def stem_tokens(stem: str) -> list[str]:
    return [t for t in re.split(r"[^A-Za-z0-9]+", stem) if t]


def looks_like_image(stem: str) -> bool:
    """An image stem has an image token and no token naming a structure.

    'T2W_axial_ProstateX-0000' is an image ('prostatex' is a patient id, not 'prostate');
    'CT_GTV' and 'prostate_t2' are masks. Tokens are matched whole and lower-cased so that
    camelCase splitting cannot find 'Prostate' inside 'ProstateX'.
    """
    tokens = {t.lower() for t in stem_tokens(stem)}
    if not tokens & IMAGE_TOKENS:
        return False
    return not any(match_kind(t) for t in tokens - IMAGE_TOKENS)


def stem_label_table(stem: str) -> dict[int, str] | None:
    """{1: 'PZ', 2: 'TZ'} from 'zonal_PZ1_TZ2_AI_HeviAI23', or None if the stem encodes none.

    Only tokens whose letters name a structure kind count (so 'HeviAI23' or 'Bosma22b' do
    not), and there must be at least two, with distinct values and names.
    """
    table: dict[int, str] = {}
    for token in stem_tokens(stem):
        hit = _LABEL_TOKEN.match(token)
        if hit and match_kind(hit.group(1)) is not None:
            value = int(hit.group(2))
            if value == 0 or value in table or hit.group(1) in table.values():
                return None
            table[value] = hit.group(1)
    return table if len(table) >= 2 else None
