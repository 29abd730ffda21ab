"""The report's templates escape every user string in every section, and refuse any image source but a
base64 PNG data URI (the only one the page's Content-Security-Policy allows)."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_fixtures import tiny_demo_run

from trajlab.files import write_run_json
from trajlab.reports import figures, probe_plots
from trajlab.reports.fragments import Figure
from trajlab.reports.html import build_report
from trajlab.reports.templating import png_data_uri, template_environment

# A value that would run a script or close an attribute (either quote) if it reached the page unescaped;
# file and directory names cannot hold "/", so they carry EVIL_NAME.
EVIL = "<script>alert('x')</script>\"q"
EVIL_NAME = EVIL.replace("/", "_")
# Every attribute the report writes; an injected one (onerror=...) would show up as another name.
ATTRIBUTES = {"lang", "charset", "http-equiv", "content", "name", "id", "class", "src", "alt"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_demo_run(tmp_path_factory)


class _Page(HTMLParser):
    """Start tags, attribute names, and the text plus attribute values of each ``<section id=...>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.ids: list[str] = []
        self.text: dict[str, str] = {"": ""}
        self.section = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes.update(name for name, _ in attrs)
        values = dict(attrs)
        if tag == "section":
            self.section = values["id"] or ""
            self.text[self.section] = ""
        if "id" in values:
            self.ids.append(values["id"] or "")
        self.text[self.section] += " ".join(v or "" for v in values.values()) + " "

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.section = ""

    def handle_data(self, data: str) -> None:
        self.text[self.section] += data


def _evil_inputs(demo_run: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """A run, an extra result and a claim result that carry EVIL wherever the report shows file content."""
    run = tmp_path / f"run{EVIL_NAME}"
    shutil.copytree(demo_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["preset"] = EVIL  # the group name: training caption, averaging and theory headings, provenance
    write_run_json(run, "config.json", cfg)  # records the new checksum
    probes = run / "analysis/line_probes.jsonl"
    lines = [{**json.loads(x), "bracketed": EVIL} for x in probes.read_text().splitlines()]
    probes.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    extra = tmp_path / f"extra{EVIL_NAME}.json"
    extra.write_text(json.dumps({EVIL: EVIL, "provenance": {"command": [EVIL]}}))
    claim = tmp_path / "claim_X.json"
    doc = {
        "claim": EVIL,
        "protocol": EVIL,
        "window": {
            "branch_step": EVIL,
            "end_step": 2,
            "length_steps": 1,
            "in_plateau": True,
            "stationarity": EVIL,
        },
        "verdict": {"verdict": EVIL, "criterion": EVIL, "checks": {EVIL: True}, EVIL: EVIL, "n": 1},
        "figures": [f"{EVIL_NAME}.png"],
        "seeds": [EVIL],
    }
    claim.write_text(json.dumps(doc))
    return run, [extra, claim]


def test_user_strings_are_escaped_in_every_section(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_matrix(matrix: object) -> None:  # an error message that echoes file content
        raise ValueError(f"bad matrix {EVIL}")

    monkeypatch.setattr(probe_plots, "plot_loss_matrix", broken_matrix)
    run, extras = _evil_inputs(demo_run, tmp_path)
    page = build_report([run], tmp_path / "r.html", extra_results=extras, title=EVIL).read_text()
    assert "<script" not in page.lower() and "onerror" not in page

    parsed = _Page()
    parsed.feed(page)
    assert "script" not in parsed.tags and parsed.attributes <= ATTRIBUTES, parsed.attributes
    assert f"claim-{EVIL}" in parsed.ids  # the claim's anchor holds the whole value: no attribute break-out
    sections = ("overview", "training", "probes", "memory", "averaging", "theory", "claims", "extra")
    for anchor in (*sections, "provenance"):
        assert anchor in parsed.text, f"section {anchor} missing"
        assert EVIL in parsed.text[anchor] or EVIL_NAME in parsed.text[anchor], anchor
    assert parsed.text[""].count(EVIL) >= 2  # <title> and <h1>
    assert re.search(r"<title>&lt;script&gt;alert\(&#\w+;x&#\w+;\)&lt;/script&gt;&#\w+;q</title>", page)


@pytest.mark.parametrize(
    "uri",
    [
        "javascript:alert(1)",
        "data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=",
        'data:image/png;base64,AAAA" onerror="alert(1)',
        "data:image/png;base64,AA AA",
        " data:image/png;base64,AAAA",
        None,
    ],
)
def test_anything_but_a_base64_png_data_uri_is_refused(uri: object) -> None:
    with pytest.raises(ValueError, match="refusing image source"):
        png_data_uri(uri)
    if uri is not None:  # a Figure without a URI is a figure that failed to draw: a note, no <img>
        figure = template_environment().get_template("fragments.html.j2").module.figure
        with pytest.raises(ValueError, match="refusing image source"):
            figure(Figure("caption", ("R1:metrics.jsonl",), uri=uri))  # type: ignore[arg-type]


def test_a_base64_png_data_uri_is_embedded_as_is() -> None:
    uri = "data:image/png;base64,iVBORw0KGgo="
    figure = template_environment().get_template("fragments.html.j2").module.figure
    html = str(figure(Figure("a <b>", ("R1:x",), uri=uri)))
    assert f'<img src="{uri}" alt="a &lt;b&gt;">' in html and "[from R1:x]" in html


def test_a_report_with_a_bad_figure_uri_is_refused_and_not_written(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(demo_run / name, bare / name)
    monkeypatch.setattr(figures, "figure_data_uri", lambda fig, **kw: "data:text/html;base64,PHNjcmlwdD4=")
    out = tmp_path / "out" / "r.html"
    with pytest.raises(ValueError, match="refusing image source"):
        build_report([bare], out)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_the_environment_autoescapes_and_rejects_undefined_names() -> None:
    env = template_environment()
    assert env.from_string("{{ x }}").render(x="<b>'\"") == "&lt;b&gt;&#39;&#34;"
    with pytest.raises(Exception, match="'y' is undefined"):
        env.from_string("{{ y }}").render()
    assert {"page.html.j2", "fragments.html.j2"} <= set(env.list_templates())
