"""One self-contained HTML report from run directories and result files (reads files, never trains).

Inputs, per run directory (each optional but ``config.json``; a section is shown only when its inputs
exist, and says what is missing otherwise)::

    RUN/config.json, provenance.json, summary.json, metrics.jsonl   (trajlab.experiments.runner)
    RUN/analysis/line_probes.jsonl   line profiles: {"step", "lr", ...LineProfile.to_dict()} per line
    RUN/analysis/loss_matrix.json    LossMatrix.to_dict()
    RUN/analysis/batch_memory.json   BatchMemory.to_dict() (+ "decay_rate_per_step")
    RUN/analysis/post_hoc.json       {"at_step", "every_steps", "bn", "rows": [{"name", "rule", "test_loss",
                                     "test_acc"}, ...]}: averages built from the stored snapshots
    RUN/analysis/provenance.json     {stage: provenance} of each analysis stage (code version, device, time)
    RUN/analysis/theory.json         {"fit", "two_point", "ema"}: the fitted noisy quadratic model's
                                     predictions next to the measurements
    RUN/probes/probe.json            ``trajlab probe RUN``'s result, used for the probe sections when the
                                     analysis has no line probes / loss matrix

Extra result files (``extra_results``) are shown as tables; those of ``trajlab average --out`` and
``trajlab probe`` (``"kind"``: ``trajlab.average`` / ``trajlab.probe``) get their own table / figure.

The page embeds its figures as PNG data URIs, has inline CSS only, needs no script and no network, and
carries a Content-Security-Policy that forbids scripts and remote loads. Every string that comes from a
file (paths, config values, names) is HTML-escaped.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import trajlab
from trajlab.reports import figures

log = logging.getLogger(__name__)

ANALYSIS_DIR = "analysis"
LINE_PROBES = "line_probes.jsonl"
LOSS_MATRIX = "loss_matrix.json"
BATCH_MEMORY = "batch_memory.json"
POST_HOC = "post_hoc.json"
THEORY = "theory.json"
ANALYSIS_PROVENANCE = "provenance.json"  # {stage: provenance} of each analysis stage
PROBE_COMMAND_RESULT = "probes/probe.json"  # ``trajlab probe RUN`` (used when the analysis has no probes)
# Config keys that do not change what a run computes: runs differing only in these (and the seed) are
# repetitions of one configuration.
_NOT_CONFIG = (("train", "seed"), ("train", "progress"), ("train", "num_threads"), ("data", "data_dir"))

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;
padding:1em 2em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:.8em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption,.note{color:#555;font-size:.88em}.missing{color:#8a5a00;background:#fff8e6;padding:.3em .6em}
.side{display:flex;flex-wrap:wrap;gap:1em}.side figure{flex:1 1 420px}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em;max-height:30em}code{font-size:.9em}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


class Raw(str):
    """A fragment of HTML already built (escaped) by this module; :func:`esc` leaves it as is."""


def esc(value: Any) -> str:
    """HTML-escape ``str(value)`` (quotes included); :class:`Raw` fragments pass through."""
    return value if isinstance(value, Raw) else html.escape(str(value), quote=True)


# ---------------------------------------------------------------------------------------- reading


@dataclass
class RunResults:
    """Everything the report reads from one run directory (None / empty where a file is absent)."""

    path: Path
    label: str
    config: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    loss_matrix: dict[str, Any] | None = None
    batch_memory: dict[str, Any] | None = None
    post_hoc: dict[str, Any] | None = None
    theory: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    analysis_provenance: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)  # which file each probe result came from

    @property
    def seed(self) -> Any:
        return (self.config or {}).get("train", {}).get("seed")

    def source(self, name: str) -> str:
        """How the report cites a file of this run: ``R1:analysis/post_hoc.json``."""
        return f"{self.label}:{name}"


def _read_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        problems.append(f"{path.name}: unreadable ({e})")
        return None


def _read_jsonl(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            problems.append(f"{path.name}: line {i} is not JSON (skipped)")
    return rows


def load_run(path: str | os.PathLike, label: str) -> RunResults:
    """Read a run directory's result files (see the module docstring for the layout)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; give trajlab run directories")
    r = RunResults(path=path, label=label)
    p = r.problems
    r.config = _read_json(path / "config.json", p)
    if r.config is None:
        raise FileNotFoundError(f"{path} is not a trajlab run directory (no readable config.json)")
    r.provenance = _read_json(path / "provenance.json", p)
    r.summary = _read_json(path / "summary.json", p)
    r.metrics = _read_jsonl(path / "metrics.jsonl", p)
    a = path / ANALYSIS_DIR
    r.probes = _read_jsonl(a / LINE_PROBES, p)
    r.loss_matrix = _read_json(a / LOSS_MATRIX, p)
    r.batch_memory = _read_json(a / BATCH_MEMORY, p)
    r.post_hoc = _read_json(a / POST_HOC, p)
    r.theory = _read_json(a / THEORY, p)
    r.analysis_provenance = _read_json(a / ANALYSIS_PROVENANCE, p)
    r.files = {
        "probes": f"{ANALYSIS_DIR}/{LINE_PROBES}",
        "matrix": f"{ANALYSIS_DIR}/{LOSS_MATRIX}",
        "memory": f"{ANALYSIS_DIR}/{BATCH_MEMORY}",
    }
    _probe_command_fallback(r)
    return r


def _probe_command_fallback(r: RunResults) -> None:
    """Take what ``trajlab probe RUN`` wrote (``RUN/probes/probe.json``) where the analysis has nothing."""
    doc = _read_json(r.path / PROBE_COMMAND_RESULT, r.problems)
    if not isinstance(doc, dict) or doc.get("kind") != "trajlab.probe":
        return
    if not r.probes and doc.get("line"):
        r.probes, r.files["probes"] = list(doc["line"]), PROBE_COMMAND_RESULT
    matrices = doc.get("matrix") or {}
    first = matrices.get("batch") or next(iter(matrices.values()), None)
    if isinstance(first, dict) and r.loss_matrix is None and r.batch_memory is None:
        r.loss_matrix, r.batch_memory = first.get("matrix"), first.get("memory")
        r.files["matrix"] = r.files["memory"] = PROBE_COMMAND_RESULT


def config_key(config: dict[str, Any]) -> str:
    """The config with seed-like keys removed, as canonical JSON: equal keys = repetitions of a run."""
    c = json.loads(json.dumps(config))
    for section, key in _NOT_CONFIG:
        c.get(section, {}).pop(key, None)
    return json.dumps(c, sort_keys=True)


# ---------------------------------------------------------------------------------------- building


def _figure(make: Callable[[], Any], caption: str, sources: Iterable[str]) -> str:
    try:
        uri = figures.figure_data_uri(make())
    except Exception as e:  # a malformed result file must not sink the whole report
        log.warning("figure %r failed: %s", caption, e)
        return f'<p class="missing">figure "{esc(caption)}" could not be drawn: {esc(e)}</p>'
    src = ", ".join(sources)
    return (
        f'<figure><img src="{uri}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)} <span class='note'>[from {esc(src)}]</span></figcaption></figure>"
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, int | float) and not isinstance(v, bool)
            cells.append(f"<td class='num'>{esc(_num(v))}</td>" if num else f"<td>{esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _num(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.{digits}g}"
    return str(x)


def _missing(what: str, hint: str) -> str:
    return f'<p class="missing">Not available: {esc(what)}. {esc(hint)}</p>'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _mean_std(values: Sequence[float]) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{np.mean(vals):.4f} ± {np.std(vals, ddof=1):.4f}"


def build_report(
    run_dirs: Sequence[str | os.PathLike],
    out_html: str | os.PathLike,
    *,
    extra_results: Sequence[str | os.PathLike] = (),
    title: str = "trajlab report",
) -> Path:
    """Write one self-contained HTML report of ``run_dirs`` (and extra result JSON files).

    Args:
        run_dirs: trajlab run directories (``config.json`` required, everything else optional).
        out_html: the HTML file to write (parent directories are created; written atomically).
        extra_results: further JSON result files, shown as tables with their provenance.
        title: the page title.

    Returns:
        The path of the written HTML file.

    Raises:
        FileNotFoundError: a run directory is missing or has no config.json; an extra result is missing.
        ValueError: no run directory and no extra result given.
    """
    if not run_dirs and not extra_results:
        raise ValueError("build_report needs at least one run directory or result file")
    runs = [load_run(d, f"R{i + 1}") for i, d in enumerate(run_dirs)]
    extras = []
    for p in extra_results:
        p = Path(p)
        problems: list[str] = []
        data = _read_json(p, problems)
        if data is None:
            raise FileNotFoundError(f"result file {p}: {'; '.join(problems) or 'not found'}")
        extras.append((p, data))
    parts = [
        _overview(runs, extras),
        _training(runs),
        _line_probes(runs),
        _memory(runs),
        _averaging(runs),
        _theory(runs),
        _extra(extras),
        _provenance(runs, extras),
    ]
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class='note'>Generated {esc(created)} by trajlab {esc(trajlab.__version__)}"
        " from result files only. Every figure and table cites its source as <code>R&lt;n&gt;:file</code>;"
        " the provenance section maps R&lt;n&gt; to its run directory, config, seed and code version.</p>"
        + "".join(parts)
        + "</body></html>\n"
    )
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------------------------------- sections


def _final_eval(r: RunResults) -> dict[str, Any]:
    evals = [row for row in r.metrics if row.get("kind") == "eval"]
    if evals:
        return evals[-1]
    return dict((r.summary or {}).get("final") or {})


def _groups(runs: Sequence[RunResults]) -> list[tuple[str, list[RunResults]]]:
    """Runs grouped by :func:`config_key` (repetitions over seeds), in order of first appearance."""
    groups: dict[str, list[RunResults]] = {}
    for r in runs:
        groups.setdefault(config_key(r.config or {}), []).append(r)
    out = []
    for members in groups.values():
        labels = ", ".join(m.label for m in members)
        preset = (members[0].config or {}).get("preset") or "custom config"
        out.append((f"{preset} ({labels})", members))
    return out


def _overview(runs: Sequence[RunResults], extras: Sequence[tuple[Path, Any]]) -> str:
    rows = []
    for r in runs:
        final = _final_eval(r)
        status = (r.summary or {}).get("status", "incomplete (no summary.json)")
        rows.append(
            [
                r.label,
                str(r.path),
                (r.config or {}).get("preset") or "custom",
                r.seed,
                final.get("step", "n/a"),
                _float(final.get("test_acc")),
                _float(final.get("live_recal/test_acc")),
                status,
            ]
        )
    body = _table(
        [
            "run",
            "directory",
            "preset",
            "seed",
            "last eval step",
            "test acc",
            "test acc (BN recal.)",
            "status",
        ],
        rows,
    )
    problems = [f"{r.label}: {p}" for r in runs for p in r.problems]
    if problems:
        body += "<p class='missing'>Problems reading inputs:</p><ul>"
        body += "".join(f"<li>{esc(p)}</li>" for p in problems) + "</ul>"
    if extras:
        body += "<p>Extra result files: " + ", ".join(f"<code>{esc(p)}</code>" for p, _ in extras) + "</p>"
    return _section("overview", "Runs", body)


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _training(runs: Sequence[RunResults]) -> str:
    body = []
    for name, members in _groups(runs):
        with_evals = [m for m in members if any(row.get("kind") == "eval" for row in m.metrics)]
        if not with_evals:
            body.append(_missing(f"eval rows in metrics.jsonl of {name}", "The run has not evaluated yet."))
            continue
        body.append(
            _figure(
                lambda w=with_evals, n=name: figures.plot_training_curves({m.label: m.metrics for m in w}, n),
                f"Test loss and accuracy of the live model and the online averages: {name}. 'live' uses the"
                " running BN statistics, 'live_recal' and every average recalibrated BN statistics.",
                [m.source("metrics.jsonl") for m in with_evals],
            )
        )
    return _section("training", "Training curves with the online averages", "".join(body))


def _line_probes(runs: Sequence[RunResults]) -> str:
    from trajlab.reports.probe_plots import plot_lr_star_over_training

    body = []
    for r in runs:
        if not r.probes:
            continue
        src = [r.source(r.files["probes"])]
        batch_bn = [p for p in r.probes if p.get("bn", "batch") == "batch"] or r.probes
        body.append(f"<h3>{esc(r.label)}</h3>")
        body.append(
            _figure(
                lambda p=batch_bn: figures.plot_parabolas(p),
                "Loss of a fixed training batch along its own gradient, f(lr) = L_B(theta - lr g_B), at"
                " several checkpoints, with the parabola fitted on [0, 2 lr*] and a held-out batch along the"
                " same line (the control).",
                src,
            )
        )
        records = [p for p in r.probes if "lr_star" in p and "step" in p]
        body.append(
            _figure(
                lambda rec=records: plot_lr_star_over_training(rec), "Best one-step lr* over training", src
            )
        )
        rows = []
        for p in sorted(r.probes, key=lambda p: (p.get("step", 0), p.get("bn", ""))):
            control = p.get("control_at_lr_star") or {}
            rows.append(
                [
                    p.get("step"),
                    p.get("bn"),
                    _float(p.get("lr")),
                    _float(p.get("lr_star")),
                    _float(p.get("lr_star_over_lr")),
                    _float((p.get("fit") or {}).get("r2")),
                    _float(p.get("loss_at_zero")),
                    _float(p.get("one_step_fraction")),
                    _float(next(iter(control.values()), math.nan)),
                    p.get("bracketed"),
                ]
            )
        body.append(
            _table(
                [
                    "step",
                    "BN",
                    "lr",
                    "lr*",
                    "lr*/lr",
                    "R² on [0, 2lr*]",
                    "f(0)",
                    "f(lr*)/f(0)",
                    "held-out L(lr*)/L(0)",
                    "bracketed",
                ],
                rows,
            )
        )
        body.append(_claim_a(batch_bn))
    if not body:
        body.append(
            _missing("line probes (analysis/line_probes.jsonl) in any run", "`trajlab demo` writes them.")
        )
    return _section("probes", "Fixed-batch loss vs lr (claim A)", "".join(body))


def _claim_a(probes: Sequence[dict[str, Any]]) -> str:
    def med(key: Callable[[dict[str, Any]], Any]) -> float:
        vals = [_float(key(p)) for p in probes]
        vals = [v for v in vals if math.isfinite(v)]
        return float(np.median(vals)) if vals else math.nan

    r2 = med(lambda p: (p.get("fit") or {}).get("r2"))
    frac = med(lambda p: p.get("one_step_fraction"))
    ratio = med(lambda p: p.get("lr_star_over_lr"))
    control = med(lambda p: next(iter((p.get("control_at_lr_star") or {}).values()), math.nan))
    return (
        f"<p>Medians over {len(probes)} checkpoints: R² {esc(_num(r2))}, f(lr*)/f(0) {esc(_num(frac))}, "
        f"lr*/lr {esc(_num(ratio))}, held-out loss ratio at lr* {esc(_num(control))}. "
        "<span class='note'>paper.md claim A counts as reproduced when R² ≳ 0.9, f(lr*) is under 10-20% of "
        "f(0), lr* ≫ lr and the held-out batch improves far less.</span></p>"
    )


def _memory(runs: Sequence[RunResults]) -> str:
    from trajlab.reports.probe_plots import plot_batch_memory, plot_loss_matrix

    body = []
    for r in runs:
        if r.loss_matrix is None and r.batch_memory is None:
            continue
        body.append(f"<h3>{esc(r.label)}</h3>")
        if r.loss_matrix is not None:
            body.append(
                _figure(
                    lambda m=r.loss_matrix: plot_loss_matrix(m),
                    "Loss matrix: training batches B_u (rows; x marks the step u that used them) and"
                    " held-out batches at stored checkpoints (columns)",
                    [r.source(r.files["matrix"])],
                )
            )
        if r.batch_memory is not None:
            rate = _float(r.batch_memory.get("decay_rate_per_step"))
            body.append(
                _figure(
                    lambda m=r.batch_memory: plot_batch_memory(m),
                    "Batch memory (claim B): held-out mean loss minus the loss of a batch, against steps"
                    f" since that batch was used; fitted decay rate per step {_num(rate)}",
                    [r.source(r.files["memory"])],
                )
            )
    if not body:
        body.append(_missing("a loss matrix (analysis/loss_matrix.json)", "`trajlab demo` writes one."))
    return _section("memory", "Loss matrix and batch memory (claim B)", "".join(body))


def _model_rows(r: RunResults) -> list[dict[str, Any]]:
    """Final online evaluations and post-hoc averages of one run as uniform rows."""
    final = _final_eval(r)
    step = final.get("step")
    rows = []
    for name, (_, accs) in figures.eval_series([final], "test_acc").items():
        loss = final.get("test_loss" if name == figures.LIVE else f"{name}/test_loss")
        bn = "running" if name == figures.LIVE else "recalibrated"
        label = "last iterate" if name in (figures.LIVE, "live_recal") else name
        rows.append(
            dict(
                model=label,
                kind="online",
                bn=bn,
                step=step,
                acc=accs[-1],
                loss=_float(loss),
                source=r.source("metrics.jsonl"),
            )
        )
    for row in (r.post_hoc or {}).get("rows", []):
        rows.append(
            dict(
                model=row.get("name"),
                kind="post hoc",
                bn=row.get("bn", (r.post_hoc or {}).get("bn")),
                step=(r.post_hoc or {}).get("at_step"),
                acc=_float(row.get("test_acc")),
                loss=_float(row.get("test_loss")),
                source=r.source(f"{ANALYSIS_DIR}/{POST_HOC}"),
            )
        )
    return rows


def _averaging(runs: Sequence[RunResults]) -> str:
    body = []
    for name, members in _groups(runs):
        table: dict[tuple, list[tuple[RunResults, dict[str, Any]]]] = {}
        for m in members:
            for row in _model_rows(m):
                table.setdefault((row["model"], row["kind"], row["bn"]), []).append((m, row))
        if not table:
            continue
        rows = []
        for (model, kind, bn), items in table.items():
            seeds = sorted({str(m.seed) for m, _ in items})
            rows.append(
                [
                    model,
                    kind,
                    bn,
                    _mean_std([row["acc"] for _, row in items]),
                    _mean_std([row["loss"] for _, row in items]),
                    len(items),
                    ", ".join(seeds),
                    ", ".join(sorted({str(row["step"]) for _, row in items})),
                    ", ".join(sorted({row["source"] for _, row in items})),
                ]
            )
        body.append(f"<h3>{esc(name)}</h3>")
        body.append(
            _table(
                ["model", "built", "BN stats", "test acc", "test loss", "n", "seeds", "at step", "from"], rows
            )
        )
    if not body:
        body.append(_missing("final evaluations", "No run has eval rows or post-hoc averages yet."))
    note = (
        "<p class='note'>mean ± sample std over the n runs of one configuration that differ only by seed; a"
        " single value when n = 1. 'online': kept during training; 'post hoc': rebuilt from the stored "
        "snapshots. Compare averages with the last iterate under the same BN statistics (recalibrated).</p>"
    )
    return _section("averaging", "Averaging table", note + "".join(body))


def _strip_for_lr(config: dict[str, Any]) -> str:
    c = json.loads(config_key(config))
    c.get("optim", {}).pop("lr", None)
    for section in ("averaging", "record", "probes"):
        c.pop(section, None)
    return json.dumps(c, sort_keys=True)


def _reduced_lr_runs(run: RunResults, runs: Sequence[RunResults]) -> list[RunResults]:
    """Runs identical to ``run`` but for a lower optim.lr (and what they record): the reduced-lr branch."""
    lr = _float((run.config or {}).get("optim", {}).get("lr"))
    key = _strip_for_lr(run.config or {})
    return [
        o
        for o in runs
        if o is not run
        and _float((o.config or {}).get("optim", {}).get("lr")) < lr
        and _strip_for_lr(o.config or {}) == key
    ]


def _measured_two_point(members: Sequence[RunResults]) -> dict[str, Any] | None:
    """Test-loss gain of post-hoc two-point averages over the recalibrated last iterate, by gap and seed."""
    gains: dict[int, list[float]] = {}
    for m in members:
        rows = (m.post_hoc or {}).get("rows", [])
        base = [
            _float(r.get("test_loss")) for r in rows if r.get("rule") == "none" and r.get("bn") != "running"
        ]
        if not base:
            continue
        for r in rows:
            if r.get("gap_steps") is not None:
                gains.setdefault(int(r["gap_steps"]), []).append(base[0] - _float(r.get("test_loss")))
    if not gains:
        return None
    gaps = sorted(gains)
    return {
        "gaps": gaps,
        "measured_gain": [float(np.mean(gains[k])) for k in gaps],
        "measured_gain_std": [float(np.std(gains[k], ddof=1)) if len(gains[k]) > 1 else 0.0 for k in gaps],
        "n": [len(gains[k]) for k in gaps],
    }


def _theory(runs: Sequence[RunResults]) -> str:
    from trajlab.reports.theory_plots import plot_ema_vs_reduced_lr

    body = []
    for name, members in _groups(runs):
        with_theory = [m for m in members if m.theory]
        if not with_theory:
            continue
        r = with_theory[0]
        th = r.theory or {}
        src = r.source(f"{ANALYSIS_DIR}/{THEORY}")
        body.append(f"<h3>{esc(name)}</h3>")
        fit = th.get("fit") or {}
        body.append(
            _table(
                ["fitted quantity", "value", "how"],
                [
                    [
                        k,
                        _float(v) if isinstance(v, int | float) else str(v),
                        (fit.get("how") or {}).get(k, ""),
                    ]
                    for k, v in fit.items()
                    if k != "how"
                ],
            )
        )
        tp = dict(th.get("two_point") or {})
        measured = _measured_two_point(members)
        if tp and measured and len(measured["n"]) and max(measured["n"]) > 1:
            # several seeds: the measured points become mean ± std; the prediction stays on its own gaps
            tp.update(measured)
            tp["predicted_gain"] = _on_gaps(th.get("two_point") or {}, measured["gaps"])
        if tp.get("gaps"):
            body.append(
                _figure(
                    lambda t=tp: figures.plot_two_point_theory(t),
                    "Two-point averaging 1/2 (theta_T + theta_(T-k)), BN recalibrated: measured test-loss"
                    " gain over the last iterate vs the noisy quadratic model's prediction. "
                    + str(tp.get("note", "")),
                    [src] + [m.source(f"{ANALYSIS_DIR}/{POST_HOC}") for m in members if m.post_hoc],
                )
            )
            pred = tp.get("predicted_gain") or [math.nan] * len(tp["gaps"])
            ratio = tp.get("predicted_ratio") or [math.nan] * len(tp["gaps"])
            std = tp.get("measured_gain_std") or [math.nan] * len(tp["gaps"])
            body.append(
                _table(
                    ["gap k", "predicted excess-loss ratio", "predicted gain", "measured gain", "± std"],
                    [
                        [int(k), _float(q), _float(p), _float(g), _float(s)]
                        for k, q, p, g, s in zip(tp["gaps"], ratio, pred, tp["measured_gain"], std)
                    ],
                )
            )
        ema = th.get("ema") or {}
        if ema:
            reduced = _reduced_lr_runs(r, runs)
            prediction = ema.get("prediction")
            figs = []
            if prediction:
                figs.append(
                    _figure(
                        lambda p=prediction: plot_ema_vs_reduced_lr(p),
                        "Predicted (noisy quadratic model, fitted curvature)",
                        [src],
                    )
                )
            figs.append(
                _figure(
                    lambda ms=members, e=ema, red=reduced: figures.plot_ema_measured(
                        {m.label: m.metrics for m in ms},
                        str(e.get("name")),
                        {o.label: o.metrics for o in red},
                    ),
                    "Measured (test loss, BN recalibrated)",
                    [m.source("metrics.jsonl") for m in [*members, *reduced]],
                )
            )
            body.append(f"<div class='side'>{''.join(figs)}</div>")
            rows = [
                [k, _float(v) if isinstance(v, int | float) else str(v)]
                for k, v in ema.items()
                if k != "prediction"
            ]
            rows += [[f"reduced-lr run {o.label}: lr", _float(o.config["optim"]["lr"])] for o in reduced]
            body.append(_table(["EMA vs reduced lr", "value"], rows))
            if not reduced:
                body.append(
                    _missing(
                        "a measured run at the reduced lr",
                        f"Train the same config with --set optim.lr={_num(_float(ema.get('reduced_lr')))}"
                        " and pass its run directory to `trajlab report` to see it next to the EMA.",
                    )
                )
    if not body:
        body.append(
            _missing("theory fits (analysis/theory.json)", "`trajlab demo` fits the noisy quadratic model.")
        )
    return _section("theory", "Theory vs measurement", "".join(body))


def _on_gaps(two_point: dict[str, Any], gaps: Sequence[int]) -> list[float]:
    known = dict(zip(two_point.get("gaps", []), two_point.get("predicted_gain", [])))
    return [_float(known.get(k)) for k in gaps]


def _flatten(data: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    if isinstance(data, dict) and depth < 4:
        out = []
        for k, v in data.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1))
        return out
    if isinstance(data, list) and data and all(isinstance(v, int | float) for v in data):
        shown = ", ".join(_num(float(v)) for v in data[:8])
        return [(prefix, f"[{shown}{', ...' if len(data) > 8 else ''}] ({len(data)} values)")]
    if isinstance(data, list | dict):
        text = json.dumps(data)
        return [(prefix, text if len(text) <= 200 else text[:200] + " ...")]
    return [(prefix, _num(data) if isinstance(data, float) else str(data))]


def _extra(extras: Sequence[tuple[Path, Any]]) -> str:
    if not extras:
        return ""
    body = []
    claims = [(i, p, d) for i, (p, d) in enumerate(extras) if isinstance(d, dict) and "claim" in d]
    if claims:
        # ``trajlab reproduce``'s claim_<X>.json: {"claim", "verdict": {"verdict", "criterion", "n"}, ...}
        rows = []
        for i, _, d in claims:
            v = d.get("verdict") if isinstance(d.get("verdict"), dict) else {"verdict": d.get("verdict")}
            seeds = ", ".join(map(str, d.get("seeds") or []))
            rows.append(
                [d.get("claim"), v.get("verdict"), v.get("criterion", ""), v.get("n", ""), seeds, f"X{i + 1}"]
            )
        body.append("<h3>Claims</h3>" + _table(["claim", "verdict", "criterion", "n", "seeds", "from"], rows))
    for i, (path, data) in enumerate(extras):
        body.append(f"<h3>X{i + 1}: {esc(path.name)}</h3>")
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind == "trajlab.average" and isinstance(data.get("rows"), list):
            # ``trajlab average --out FILE``: one row per (rule, step, BN mode)
            body.append(
                f"<p>Post-hoc averages of <code>{esc(data.get('run_dir'))}</code>, updated every "
                f"{esc(data.get('every_steps'))} step(s).</p>"
            )
            keys = ("rule", "at_step", "bn", "test_loss", "test_acc")
            body.append(_table(keys, [[row.get(k) for k in keys] for row in data["rows"]]))
            data = {k: v for k, v in data.items() if k not in ("rows", "run_config", "run_provenance")}
        elif kind == "trajlab.probe" and data.get("line"):
            body.append(
                _figure(
                    lambda d=data: figures.plot_parabolas(d["line"]),
                    "Line profiles from `trajlab probe`",
                    [f"X{i + 1}"],
                )
            )
            data = {k: v for k, v in data.items() if k not in ("line", "matrix", "alignment", "run_config")}
        items = [(k, v) for k, v in _flatten(data) if not k.startswith("provenance")]
        body.append(_table(["field", "value"], items[:300]))
        if len(items) > 300:
            body.append(f"<p class='note'>{len(items) - 300} more fields in {esc(path)}</p>")
    return _section("extra", "Other results", "".join(body))


_PROVENANCE_KEYS = ("trajlab", "python", "torch", "numpy", "device", "platform", "hostname", "created_utc")


def _provenance_rows(prov: dict[str, Any]) -> list[list[Any]]:
    git = prov.get("git") or {}
    rows = [["git revision", f"{git.get('revision')}{' (dirty)' if git.get('dirty') else ''}"]]
    rows += [[k, prov.get(k)] for k in _PROVENANCE_KEYS if k in prov]
    rows.append(["command", " ".join(map(str, prov.get("command") or [])) or "(library call)"])
    for res in prov.get("resumes", []):
        rows.append(["resumed", f"at step {res.get('at_step')} on {res.get('created_utc')}"])
    return rows


def _provenance(runs: Sequence[RunResults], extras: Sequence[tuple[Path, Any]]) -> str:
    body = []
    for r in runs:
        cfg = r.config or {}
        rows = [["directory", str(r.path)], ["preset", cfg.get("preset") or "custom"], ["seed", r.seed]]
        rows += _provenance_rows(r.provenance or {}) if r.provenance else [["provenance.json", "missing"]]
        body.append(f"<h3>{esc(r.label)}</h3>" + _table(["", ""], rows))
        stamps = r.analysis_provenance or {}
        if isinstance(stamps, dict) and stamps:
            body.append(
                f"<p>{esc(r.label)}: analysis stages (files under <code>{ANALYSIS_DIR}/</code>)</p>"
                + _table(
                    ["stage", "git revision", "trajlab", "torch", "device", "computed (UTC)"],
                    [_stamp_row(name, st) for name, st in stamps.items() if isinstance(st, dict)],
                )
            )
        body.append(
            f"<details><summary>{esc(r.label)} config.json (the fully resolved configuration)</summary>"
            f"<pre>{esc(json.dumps(cfg, indent=2))}</pre></details>"
        )
    for i, (path, data) in enumerate(extras):
        prov = data.get("provenance") if isinstance(data, dict) else None
        rows = [["file", str(path)]] + (
            _provenance_rows(prov) if isinstance(prov, dict) else [["provenance", "none"]]
        )
        body.append(f"<h3>X{i + 1}</h3>" + _table(["", ""], rows))
    return _section("provenance", "Provenance", "".join(body))


def _stamp_row(stage: str, prov: dict[str, Any]) -> list[Any]:
    git = prov.get("git") or {}
    rev = f"{git.get('revision')}{' (dirty)' if git.get('dirty') else ''}"
    return [stage, rev, prov.get("trajlab"), prov.get("torch"), prov.get("device"), prov.get("created_utc")]
