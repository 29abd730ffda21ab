"""The HTML report: every section whose inputs exist, self-contained images, escaping, seeds, the CLI."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
from report_fixtures import tiny_demo_run

from trajlab.files import write_run_json
from trajlab.reports.html import build_report


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_demo_run(tmp_path_factory)


SECTIONS = ("overview", "training", "probes", "memory", "averaging", "theory", "provenance")
IMG = re.compile(r'<img src="([^"]*)"')


def _images(page: str) -> list[str]:
    return IMG.findall(page)


def test_report_shows_every_section_with_embedded_images(demo_run: Path, tmp_path: Path) -> None:
    page = build_report([demo_run], tmp_path / "r.html").read_text()
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in page
    # Everything exists but a run at the reduced lr, which the demo does not train.
    assert page.count("Not available") == 1 and "a measured run at the reduced lr" in page
    images = _images(page)
    assert len(images) >= 7  # curves, parabolas, lr*, matrix, memory, two-point, EMA (x2)
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    assert "R1:analysis/post_hoc.json" in page and "git revision" in page


def test_sections_without_inputs_say_so(demo_run: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(demo_run / name, bare / name)
    page = build_report([bare], tmp_path / "r.html").read_text()
    assert "Not available: line probes" in page and "Not available: a loss matrix" in page
    assert "Not available: theory fits" in page and "provenance.json</td><td>missing" in page
    assert '<section id="training">' in page and len(_images(page)) == 1


def test_user_strings_are_escaped(demo_run: Path, tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    run = tmp_path / f"run{evil.replace('/', '_')}"
    shutil.copytree(demo_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["preset"] = evil
    cfg["data"]["data_dir"] = f'"><img src=x onerror=alert(1)>{evil}'
    write_run_json(run, "config.json", cfg)  # records the new checksum
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({evil: evil, "provenance": {"command": [evil]}}))
    page = build_report([run], tmp_path / "r.html", extra_results=[extra], title=evil).read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert all(src.startswith("data:image/png;base64,") for src in _images(page))


def test_runs_differing_only_by_seed_give_mean_std(demo_run: Path, tmp_path: Path) -> None:
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}"
        shutil.copytree(demo_run, run)
        cfg = json.loads((run / "config.json").read_text())
        cfg["train"]["seed"] = seed
        write_run_json(run, "config.json", cfg)  # records the new checksum
        post = json.loads((run / "analysis/post_hoc.json").read_text())
        for row in post["rows"]:
            row["test_acc"] += 0.01 * seed
        (run / "analysis/post_hoc.json").write_text(json.dumps(post))
        runs.append(run)
    page = build_report(runs, tmp_path / "r.html").read_text()
    assert "(R1, R2)" in page and "0, 1" in page and " ± " in page


def test_probe_and_average_command_results(demo_run: Path, tmp_path: Path) -> None:
    """``trajlab probe``'s RUN/probes/probe.json feeds the probe sections; an average JSON a table."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(demo_run / name, bare / name)
    lines = [json.loads(x) for x in (demo_run / "analysis/line_probes.jsonl").read_text().splitlines()]
    matrix = json.loads((demo_run / "analysis/loss_matrix.json").read_text())
    memory = json.loads((demo_run / "analysis/batch_memory.json").read_text())
    (bare / "probes").mkdir()
    probe = {
        "kind": "trajlab.probe",
        "line": lines,
        "matrix": {"batch": {"matrix": matrix, "memory": memory}},
    }
    (bare / "probes/probe.json").write_text(json.dumps(probe))
    average = tmp_path / "average.json"
    rows = [{"rule": "two_point_k8", "at_step": 24, "bn": "recalibrated", "test_loss": 0.5, "test_acc": 0.75}]
    average.write_text(json.dumps({"kind": "trajlab.average", "run_dir": str(bare), "rows": rows}))
    claim = tmp_path / "claim_E.json"
    verdict = {"verdict": "reproduced", "criterion": "gain > 2 std", "n": 3}
    claim.write_text(json.dumps({"claim": "E", "verdict": verdict, "seeds": [0, 1, 2]}))
    page = build_report([bare], tmp_path / "r.html", extra_results=[average, claim]).read_text()
    assert "<td>E</td><td>reproduced</td><td class='num'>3</td><td>0, 1, 2</td>" in page
    assert "<b>Criterion.</b> gain &gt; 2 std" in page
    assert "R1:probes/probe.json" in page and "Not available: line probes" not in page
    assert "Not available: a loss matrix" not in page and "<td>two_point_k8</td>" in page


def test_report_command(demo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trajlab import cli

    out = tmp_path / "sub" / "report.html"
    assert cli.main(["report", str(demo_run), "--out", str(out), "--title", "<b>t</b>"]) == 0
    assert out.is_file() and str(out.resolve()) in capsys.readouterr().out
    assert "<title>&lt;b&gt;t&lt;/b&gt;</title>" in out.read_text()
    assert cli.main(["report", str(tmp_path), "--out", str(out)]) == 2
    assert "not a trajlab run directory" in capsys.readouterr().err


def _png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)


def test_claims_only_report_embeds_figures_checks_and_escapes(tmp_path: Path) -> None:
    """Claim results alone: no empty run sections; each claim's criterion, checks, window, numbers and
    PNG (found next to the JSON by name, whatever directory the stored path names); everything escaped."""
    _png(tmp_path / "claim_E.png")
    (tmp_path / "claim_F.png").write_text("<script>not a png</script>")
    doc_e = {
        "claim": "E",
        "budget": "medium",
        "window": {"branch_step": 1400, "end_step": 2400, "length_steps": 1000, "in_plateau": False},
        "verdict": {
            "verdict": "inconclusive",
            "criterion": "gain <b>grows</b>",
            "preconditions": {"window inside a plateau": False},
            "checks": {"gain at the largest gap > 0": True, "gain grows with k": None},
            "n": 3,
            "acc_gain_largest_gap": {"mean": 0.0123, "std": 0.004, "n": 3},
            "gaps": [50, 100],
        },
        "figures": ["some/other/cwd/claim_E.png"],
        "seeds": [0, 1, 2],
    }
    doc_f = {"claim": "F<img>", "verdict": {"verdict": "not reproduced", "n": 3}, "figures": ["claim_F.png"]}
    doc_g = {"claim": "G", "verdict": {"verdict": "reproduced", "n": 3}, "figures": ["claim_G.png"]}
    paths = []
    for name, doc in (("claim_E.json", doc_e), ("claim_F.json", doc_f), ("claim_G.json", doc_g)):
        (tmp_path / name).write_text(json.dumps(doc))
        paths.append(tmp_path / name)
    page = build_report([], tmp_path / "claims.html", extra_results=paths).read_text()
    assert '<section id="claims">' in page and '<section id="training">' not in page
    assert '<section id="extra">' not in page  # every extra result is a claim
    assert page.count("<img ") == 1 and "data:image/png;base64," in page  # E only: F is not a PNG
    assert "claim_F.png is not a PNG file" in page and "claim_G.png not found next to claim_G.json" in page
    assert "gain &lt;b&gt;grows&lt;/b&gt;" in page and "Claim F&lt;img&gt;" in page
    assert "<td>precondition: window inside a plateau</td><td>no</td>" in page
    assert "<td>gain grows with k</td><td>n/a (not tested)</td>" in page
    assert "0.0123 ± 0.004 (n=3)" in page and "Window [1400, 2400] (1000 steps)" in page
    assert "quasi-stationary: <b>no</b> (neither the train loss nor the held-out loss" in page
