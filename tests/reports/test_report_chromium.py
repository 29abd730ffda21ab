"""The report in a real browser: headless Chromium loads every figure and logs no console error.

Skipped when ``/usr/bin/chromium`` is absent (Debian package ``chromium``).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from report_fixtures import tiny_demo_run

from trajlab.reports.html import build_report


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_demo_run(tmp_path_factory)


CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"
)

# Appended to a copy of the page: marks <body> once every image has decoded (the report itself has no
# script, and its Content-Security-Policy forbids them; the copy allows inline scripts for this probe).
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
  document.body.setAttribute('data-images', ok ? 'loaded' : 'broken');
  document.body.setAttribute('data-image-count', String(imgs.length));
});
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def _console_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "Uncaught" in line or "ERROR:CONSOLE" in line or "Refused to" in line or ":CONSOLE(" in line
    ]


def test_chromium_shows_every_figure_without_console_errors(demo_run: Path, tmp_path: Path) -> None:
    _assert_renders(build_report([demo_run], tmp_path / "report.html"), tmp_path)


def test_chromium_shows_the_claims_report(tmp_path: Path) -> None:
    """The page `trajlab reproduce` writes: claim results only, their PNGs embedded."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for claim in "AE":
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1, 2], [2, 0, 1])
        fig.savefig(tmp_path / f"claim_{claim}.png")
        plt.close(fig)
        doc = {
            "claim": claim,
            "verdict": {"verdict": "reproduced", "criterion": "x < 1", "checks": {"x < 1": True}, "n": 3},
            "figures": [f"elsewhere/claim_{claim}.png"],
            "seeds": [0, 1, 2],
        }
        paths.append(tmp_path / f"claim_{claim}.json")
        paths[-1].write_text(json.dumps(doc))
    page = build_report([], tmp_path / "claims.html", extra_results=paths)
    assert page.read_text().count("<img ") == 2
    _assert_renders(page, tmp_path)


def _assert_renders(page: Path, tmp_path: Path) -> None:
    n_images = page.read_text().count("<img ")

    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, "--window-size=1200,3000", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    assert not _console_errors(proc.stderr), _console_errors(proc.stderr)

    probe = tmp_path / "probe.html"
    html = page.read_text().replace(
        "style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    )
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    proc = _chromium(tmp_path, "--dump-dom", probe.as_uri())
    body = re.search(r"<body[^>]*>", proc.stdout)
    assert body is not None, proc.stderr[-2000:]
    assert 'data-images="loaded"' in body.group(0), body.group(0)
    assert f'data-image-count="{n_images}"' in body.group(0)
    assert not _console_errors(proc.stderr), _console_errors(proc.stderr)
