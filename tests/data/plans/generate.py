"""How the four-needle test plans in this folder were made (rerun only to change them).

For each real case: the template hole nearest the target centre, then the four holes two
columns and two rows (10 mm) away from it on each side, a square of 20 mm sides; a hole whose
path is blocked is replaced by its nearest admissible neighbour. Tips at the deepest depth the
axis stays in the target (bounded by the deepest clear depth), 20 mm exposure, the six pairs
within 25 mm pulsed at 1300 V/cm times their spacing (ECT, 8 x 100 us). The plans are fixed
data: tests read the JSON, not this script.

    python tests/data/plans/generate.py ../shared/data/anatomy
"""

from __future__ import annotations

import itertools
import string
import sys
from pathlib import Path

import numpy as np

from optimizer.case import prepare_case
from optimizer.evaluate.plan import Plan, PlanNeedle, PulsedPair

HERE = Path(__file__).parent


def shifted(label: str, dc: int, dr: int) -> str:
    col = string.ascii_uppercase.index(label[0]) + dc
    return f"{string.ascii_uppercase[col]}{int(label[1:]) + dr}"


def make_plan(case_dir: Path) -> Plan:
    case = prepare_case(case_dir, spacing_mm=2.0)
    reach = {r.label: r for r in case.reach}
    admissible = {r.label: r for r in case.admissible}
    centre = case.planning.grid.index_to_world(np.argwhere(case.planning.target_mask()).mean(0))
    d = case.template.direction

    def off_axis(p: np.ndarray) -> float:
        v = p - centre
        return float(np.linalg.norm(v - (v @ d) * d))

    mid = min(case.template.holes(), key=lambda h: off_axis(h.position_mm)).label
    needles = []
    for dc, dr in ((-2, -2), (2, -2), (-2, 2), (2, 2)):
        want = shifted(mid, dc, dr)
        if want not in admissible:
            p = reach[want].position_mm if want in reach else case.template.hole(mid).position_mm
            want = min(admissible, key=lambda k: np.linalg.norm(admissible[k].position_mm - p))
        r = admissible[want]
        assert r.target_depth_mm is not None
        depth = min(r.target_depth_mm[1], r.max_tip_depth_mm)
        n = case.template.needle(want, depth, 20.0)
        assert n.entry_mm is not None
        needles.append(PlanNeedle(tip_mm=tuple(n.tip_mm), direction=tuple(n.direction),
                                  exposure_mm=20.0, hole=want, entry_mm=tuple(n.entry_mm)))
    pairs = []
    for a, b in itertools.combinations(range(4), 2):
        spacing = float(np.linalg.norm(np.subtract(needles[a].tip_mm, needles[b].tip_mm)))
        if spacing <= 25.0:
            voltage = min(3000.0, round(130.0 * spacing, -1))
            pairs.append(PulsedPair(anode=a, cathode=b, voltage_V=voltage, pulses=8,
                                    pulse_length_us=100.0))
    return Plan(name=f"four-needle square, {case_dir.name}", protocol="ect",
                needles=needles, pairs=pairs)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        make_plan(folder).save(HERE / f"{folder.name}.json")
        print(folder.name)
