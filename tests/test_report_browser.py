"""report.html opens in a real headless Chromium with no console messages and every plot rendered.

Chromium comes from Debian's ``chromium`` package (``make test`` installs it when missing); without it
this test fails rather than skips, so a report nobody can see is never called done."""

from __future__ import annotations

import re
import shutil
import subprocess

import graft
from graft.config import EvalConfig, RunConfig, TrainConfig

CHECK = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0));
  document.title = "plots:" + images.length + " broken:" + broken.length;
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("no Chromium found: install Debian's chromium (apt-get install -y chromium)")


def open_in_chromium(page, tmp_path) -> tuple[str, str]:
    checked = tmp_path / "checked.html"
    checked.write_text(
        page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8"
    )
    done = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=1",
         "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         checked.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def test_the_report_renders_every_plot_in_a_real_browser(tiny_source, sentiment_csv, tmp_path):
    cfg = RunConfig(
        train=TrainConfig(epochs=2), evaluation=EvalConfig(baselines="cheap", target_precision=0.9)
    )
    graft.fit(
        sentiment_csv, backbone=tiny_source, strategy="full", config=cfg, out=tmp_path / "run", progress=False
    )
    report = tmp_path / "run" / "bundle" / "report.html"
    html = report.read_text(encoding="utf-8")
    assert "<script" not in html and "http" not in html  # self-contained, nothing to run or fetch
    dom, log = open_in_chromium(report, tmp_path)
    title = re.search(r"<title>(.*?)</title>", dom).group(1)
    plots, broken = map(int, re.fullmatch(r"plots:(\d+) broken:(\d+)", title).groups())
    # the model against its baselines, reliability, coverage, confusion matrix (+ training curves)
    assert plots == html.count("<img") >= 4 and broken == 0, title
    assert not [line for line in log.splitlines() if ":CONSOLE" in line]


def test_the_learning_curve_report_renders_in_a_real_browser(tiny_source, sentiment_csv, tmp_path):
    from graft.curve import learning_curve

    cfg = RunConfig().replace("backbone", source=tiny_source)
    curve = learning_curve(sentiment_csv, sizes=[4, "all"], strategies=["linear_probe"], seeds=2, config=cfg,
                           progress=False)  # fmt: skip
    page = tmp_path / "curve.html"
    page.write_text(curve.to_html(), encoding="utf-8")
    dom, log = open_in_chromium(page, tmp_path)
    title = re.search(r"<title>(.*?)</title>", dom).group(1)
    assert title == "plots:1 broken:0"
    assert not [line for line in log.splitlines() if ":CONSOLE" in line]
