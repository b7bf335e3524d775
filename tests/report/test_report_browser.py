"""The tiny run's report.html and groups.html in headless Chromium: no JavaScript errors,
the headline and the first plot on the first screen at 1000 x 900, nothing wider than the
window at 1000 and 1600 px. Screenshots land beside the copied run (RUN/screenshots/) for a
person to look at. Skipped only when no Chromium can be found."""

from __future__ import annotations

import shutil
import struct

import pytest

from maskshare.report import browser
from maskshare.report.page import write_report

pytestmark = pytest.mark.skipif(
    browser.find_chromium() is None,
    reason="no chromium found (apt-get install chromium, or set MASKSHARE_CHROMIUM)")


def _png_size(p) -> tuple[int, int]:
    head = p.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def run(finished_tiny_run, tmp_path_factory):
    dst = tmp_path_factory.mktemp("browser") / finished_tiny_run[1].name
    shutil.copytree(finished_tiny_run[1], dst)
    write_report(dst)
    return dst


def test_the_probe_sees_overflow_and_script_errors(tmp_path):
    # the checks below can fail: a page that scrolls sideways and throws is caught
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head></head><body><h1 id="headline">x</h1>'
                   '<div style="width:1400px">wide</div><script>undefinedFunction()</script>'
                   "</body></html>")
    c = browser.check_page(bad, 1000, 900, ids=("headline", "missing"))
    assert c.overflows and c.scroll_width >= 1400 and c.wide
    assert any("undefinedFunction" in e for e in c.errors)
    assert c.tops["headline"] < c.height and c.tops["missing"] is None


@pytest.mark.parametrize("width", [1000, 1600])
@pytest.mark.parametrize("page", ["report.html", "groups/attention/groups.html"])
def test_pages_load_cleanly_and_fit_the_width(run, page, width):
    c = browser.check_page(run / page, width, 900, ids=("headline", "plot-0"))
    assert c.width == width
    assert c.errors == []
    assert not c.overflows, f"{page} scrolls sideways at {width} px: {c.wide}"
    assert c.wide == []
    assert c.tops["headline"] is not None and 0 <= c.tops["headline"] < c.height
    if page == "report.html":
        # the answer is on the first screen: the headline and the first F-vs-size plot
        assert c.tops["plot-0"] is not None and c.tops["plot-0"] < c.height


def test_screenshots_are_written_beside_the_run(run):
    shots = browser.screenshots(run, (1000, 1600))
    names = sorted(p.name for p in shots)
    assert names == ["groups-1000.png", "groups-1600.png", "report-1000.png", "report-1600.png"]
    for p in shots:
        assert p.parent == run / "screenshots"
        assert _png_size(p) == (int(p.stem.split("-")[-1]), 900)
