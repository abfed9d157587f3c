"""The report: markdown tables with paper beside ours, and one self-contained HTML file whose pictures render."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import pytest
from PIL import Image

from anombench.html_report import render_html
from anombench.report import report_markdown
from tests.test_runner import QUIET, suite_doc  # the same small suite the runner tests use
from anombench.runner import run_suite
from anombench.suite import build_suite


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        if tag in ("link", "script") and (attributes.get("href") or attributes.get("src")):
            self.links.append(tag)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, registry):
    doc = suite_doc({"pg": {"plugin": "pixel_gaussian"}, "pg-wide": {"plugin": "pixel_gaussian",
                                                                      "params": {"min_std": 0.2}}})
    doc["reference"] = {"source": "a test reference", "values": {"pg": {"disc": [97.0, 91.0]}},
                        "only": {"AE-SSIM": {"disc": [93.0, 83.4]}}}
    out = tmp_path_factory.mktemp("report") / "run"
    run_suite(build_suite(doc, "t.yaml", registry), out, QUIET, registry=registry)
    return out


def test_markdown_shows_ours_paper_and_difference(finished_run):
    text = report_markdown(finished_run)
    row = next(line for line in text.splitlines() if line.startswith("| disc"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "(97.0, 91.0)" in cells and "(93.0, 83.4)" in cells
    ours = re.match(r"\((\d+\.\d), (\d+\.\d)\)", cells[1])
    diff = re.match(r"\(([+-]\d+\.\d), ([+-]\d+\.\d)\)", cells[3])
    assert ours and diff and abs(float(ours[1]) - 97.0 - float(diff[1])) < 0.11
    assert "AE-SSIM (paper only)" in text and "| all" in text and "'paper' columns: a test reference" in text


def test_html_is_self_contained_and_every_picture_decodes(finished_run):
    page = render_html(finished_run)
    parser = Collector()
    parser.feed(page)
    assert not parser.links, "the report must not load anything from outside"
    # per class: one curves figure + one overlay grid per method
    assert len(parser.images) == 2 * (1 + 2)
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        picture = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        picture.verify()
        assert picture.size[0] > 200
    assert "<table" in page and "Provenance" in page and "AE-SSIM (paper only)" in page
    # one column per method, the paper's figure and the difference stacked under ours
    head = page.split("<h2>Table</h2>", 1)[1].split("</thead>", 1)[0]
    headers = re.findall(r"<th>([^<]*)</th>", head)
    assert [h for h in headers if h.strip()] == ["category", "pg", "pg-wide", "AE-SSIM (paper only)"]
    assert re.search(r'<td>\(\d+\.\d, \d+\.\d\)<br><small class="ref">paper \(97\.0, 91\.0\) &Delta; '
                     r'\([+-]\d+\.\d, [+-]\d+\.\d\)</small></td>', page)
