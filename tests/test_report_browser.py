"""graphc.report in a real browser: headless Chromium loads the page, runs its script, and we read
the rendered DOM (`--dump-dom`), its console log and a screenshot.

Skipped only where Chromium is absent on a developer's machine; `.ci/run` installs Debian's
`chromium` and sets GRAPHC_REQUIRE_BROWSER=1, so in CI a missing browser fails the test.
"""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import graphc
import graphc.nn as nn
from graphc.inspect.dot import graphviz_available

from models import SimpleNet

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]


def browser() -> str:
    exe = next((p for p in map(shutil.which, BROWSERS) if p), None)
    if exe is None:
        if os.environ.get("GRAPHC_REQUIRE_BROWSER") == "1" or os.environ.get("CI"):
            pytest.fail("Chromium is required here (GRAPHC_REQUIRE_BROWSER=1 or CI) but not installed: "
                        "apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium); CI runs this test")
    return exe


def run_browser(tmp_path, url: str, *extra: str):
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"  # a fresh profile per run
    p = subprocess.run([browser(), *FLAGS, f"--user-data-dir={profile}", *extra, url], capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def console_errors(stderr: str) -> list[str]:
    """Script errors Chromium logged from the page's console."""
    return [ln for ln in stderr.splitlines() if "Uncaught" in ln or ("CONSOLE" in ln and "rror" in ln)]


def js_errors(dom: str) -> str:
    """What the page's error hook recorded on <html data-js-errors="..."> ('' if nothing)."""
    m = re.search(r'<html[^>]*\sdata-js-errors="([^"]*)"', dom)
    return m.group(1) if m else ""


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    graphc.manual_seed(0)
    model = SimpleNet()
    x, y = np.zeros((64, 10), np.float32), np.zeros((64, 1), np.float32)
    step = graphc.compile_train_step(model, nn.MSELoss(), graphc.optim.SGD(model.parameters(), lr=0.1), x, y,
                                     mode="interpret")
    path = graphc.report(step, tmp_path_factory.mktemp("report") / "report.html")
    return step, path


def test_report_renders_in_chromium_without_script_errors(report_path, tmp_path):
    step, path = report_path
    k = step.stages.index("build_train_step")
    # the hash selects a value: the page's script highlights its definition and uses on load
    p = run_browser(tmp_path, f"file://{path}#s{k}-v-1", "--dump-dom")
    dom = p.stdout
    assert 'data-ready="1"' in dom, "the page's script did not finish"
    assert not js_errors(dom), js_errors(dom)
    assert not console_errors(p.stderr), console_errors(p.stderr)
    for j, name in enumerate(step.stages):
        assert f'<section id="stage-{j}"' in dom and f"Stage {j}: {name}" in dom
    assert dom.count('<svg class="mem"') == 1
    if graphviz_available():
        # one picture per stage that changed the IR (traced, fuse_linear_relu, build_train_step, ...)
        html = open(path, encoding="utf-8").read()
        shown = len(re.findall(r'<section id="stage-\d+" class="stage scope', html))
        assert dom.count('<svg class="graph"') == shown >= 3
        assert dom.count('<g id="s0-node') >= 8  # the traced graph's boxes survived parsing
    # the script ran on the real page: %1's definition and its uses are highlighted
    assert re.search(r'<var class="d hl-def" id="s%d-v-1">' % k, dom)
    assert len(re.findall(r'<var class="hl">%1</var>', dom)) == 2  # read by dropout and linear_backward
    assert re.search(r'<a class="v g hl" href="#s%d-v-1"' % k, dom)  # and named by `# grad of %1`
    if graphviz_available():  # its box in the picture, and the boxes that read it
        assert re.search(r'<g id="s%d-node\d+" class="node hl-def" data-defs="1"' % k, dom)
        assert len(re.findall(r'class="node hl" data-defs="[^"]*" data-uses="[^"]*\b1\b', dom)) == 2


def test_report_screenshot(report_path, tmp_path):
    _, path = report_path
    shot = tmp_path / "report.png"
    p = run_browser(tmp_path, f"file://{path}", "--window-size=1400,1000", f"--screenshot={shot}")
    assert not console_errors(p.stderr), console_errors(p.stderr)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 1400  # the width in the IHDR chunk
    assert len(data) > 30_000  # a blank page compresses to a few KB; the summary and listing do not


def test_the_check_sees_script_errors(tmp_path):
    """The harness itself: a page whose script throws is caught, in the DOM and in the console log."""
    from graphc.inspect.html_assets import ERROR_HOOK

    page = tmp_path / "bad.html"
    page.write_text(f"<!DOCTYPE html><html><head><script>{ERROR_HOOK}</script></head>"
                    "<body><script>noSuchFunction();</script></body></html>", encoding="utf-8")
    p = run_browser(tmp_path, f"file://{page}", "--dump-dom")
    assert "noSuchFunction" in js_errors(p.stdout)
    assert console_errors(p.stderr)
