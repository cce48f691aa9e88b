"""The library report: links to every planned case's report, the failures with their reasons,
the research-use banner and distribution pictures that load in a browser."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from optimizer import RESEARCH_USE_NOTICE
from optimizer.anatomy.readers.npz import save_anatomy_npz
from optimizer.evaluate.protocol import load_protocol
from services.planner.batch import protocol_sha256
from services.planner.batch_task import BatchSettings, CaseJob, CaseOutcome, plan_case
from services.planner.library import Library
from services.planner.library_create import open_or_create_library
from services.planner.library_report import (
    COVERAGE_PICTURE,
    ORGANS_PICTURE,
    REPORT_FILE,
    write_library_report,
)
from tests.browser import dump_dom
from tests.evaluate.cases import lesion_anatomy

QUICK = BatchSettings(trials=3, grid_mm=2.0, nonlinear=False, margin_mm=25.0)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _plan(tmp: Path, anatomy: Path, case_id: str) -> CaseOutcome:
    protocol = load_protocol("ect")
    job = CaseJob(case_id, str(anatomy), protocol, protocol_sha256(protocol), QUICK,
                  f"report-{case_id}", None, str(tmp / f"{case_id}.journal.log"))  # fmt: skip
    return plan_case(job)


def _library(path: Path) -> Library:
    return open_or_create_library(path, protocol="ect",
                                  protocol_sha256=protocol_sha256(load_protocol("ect")),
                                  tissue_table="ectplan-default 2026.11")  # fmt: skip


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    tmp = tmp_path_factory.mktemp("report")
    lesion = save_anatomy_npz(lesion_anatomy(), tmp / "lesion.npz")
    broken = tmp / "broken-case"
    broken.mkdir()
    (broken / "prostate.nii.gz").write_bytes(b"truncated")
    lib = _library(tmp / "lib")
    for outcome in (_plan(tmp, lesion, "lesion-a"), _plan(tmp, lesion, "lesion-b"),
                    _plan(tmp, broken, "broken-case")):  # fmt: skip
        lib.record(outcome.row, outcome.files if outcome.planned else None)
    write_library_report(lib)
    return lib


def test_the_report_links_every_planned_case_and_lists_the_failures(library):
    page = (library.path / REPORT_FILE).read_text()
    assert "Research use only." in page and html.escape(RESEARCH_USE_NOTICE) in page
    links = re.findall(r'<a href="([^"]+)">', page)
    assert links == ["cases/lesion-a/report.html", "cases/lesion-b/report.html"]
    for link in links:
        assert (library.path / link).is_file()
    failure = library.row("broken-case")["reason"]
    assert "loading the anatomy" in failure
    failures = page.split("<h2>Failures</h2>")[1]
    assert "broken-case" in failures and html.escape(failure) in failures
    assert "ectplan-default 2026.11" in page and ">ect<" in page
    # The modelled organs are named (the lesion phantom has none segmented).
    assert "Modelled organs (not segmented)" in page and "rectal_wall" in page


def test_the_pictures_are_images_and_all_load_in_a_browser(library):
    for name in (COVERAGE_PICTURE, ORGANS_PICTURE):
        data = (library.path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
    dom = dump_dom(library.path / REPORT_FILE)
    total = re.search(r'data-images-total="(\d+)"', dom)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert total is not None and loaded is not None, dom[-2000:]
    assert int(total.group(1)) == 2 and loaded.group(1) == total.group(1)


def test_a_library_of_failures_only_still_has_a_complete_report(library, tmp_path):
    lib = _library(tmp_path / "lib")
    lib.record(library.row("broken-case"))
    page = write_library_report(lib).read_text()
    assert "0 planned" in page and "1 failed" in page and "<a href" not in page
    for name in (COVERAGE_PICTURE, ORGANS_PICTURE):
        assert (tmp_path / "lib" / name).read_bytes().startswith(PNG_MAGIC)
    dom = dump_dom(tmp_path / "lib" / REPORT_FILE)
    assert 'data-images-loaded="2"' in dom and 'data-images-total="2"' in dom
