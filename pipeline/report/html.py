"""The page's HTML pieces: escaping, numbers, tables, inline PNG figures, the run lines and the stylesheet.

Nothing here reads MLflow: every function takes what it shows. (``import html`` below is the standard library's
module, not this one: imports are absolute.)
"""
from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import html
from typing import Iterable, Optional

import pipeline.report.names as names

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1d2228;margin:0;
background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:24px 28px 64px;background:#fff;min-height:100vh}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:21px;margin:38px 0 8px;padding-top:10px;
border-top:2px solid #dfe3e8}h3{font-size:17px;margin:22px 0 6px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13.5px}
th,td{border:1px solid #d5dae0;padding:3px 9px;text-align:left;vertical-align:top}
th{background:#eef1f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:10px 0 20px}figure img{max-width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{font-size:12.5px;color:#5a636e}
code{font-size:12.5px;background:#f1f3f5;padding:0 3px;border-radius:3px}
.meta{color:#4b545e;font-size:13.5px}.notrun{color:#8a5a00;background:#fff6e0;border-left:4px solid #e0a800;
padding:6px 12px}.warn{color:#8b1c1c;background:#fdecec;border-left:4px solid #d33;padding:6px 12px}
.verdict{font-size:17px;font-weight:600;background:#eef5ff;border-left:6px solid #2f6fdb;padding:10px 14px;
margin:10px 0}.note{color:#4b545e;font-size:13.5px}nav ol{columns:2;font-size:14px}
.status-FINISHED{color:#176d2c}.status-FAILED,.status-KILLED{color:#b3261e;font-weight:600}
.status-RUNNING{color:#6b5a00}.wide{overflow-x:auto;max-width:100%}
"""


def esc(value) -> str:
    """``value`` as HTML text (quotes escaped too: it may land in an attribute)."""
    return html.escape(str(value), quote=True)


def fmt(value) -> str:
    """A number as a person reads it: integers whole, others to 4 significant digits."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        if value != value:
            return "n/a"
        if float(value).is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def wide_table(head: str, rows: Iterable[str]) -> str:
    """A table of ready-made header cells and ``<tr>`` rows, scrolling sideways when it is too wide."""
    return f"<div class=\"wide\"><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def table(headers: list, rows: list, numeric_from: int = 1) -> str:
    """An HTML table; cells are escaped, columns from ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f"<td class=\"num\">{esc(fmt(c))}</td>" if i >= numeric_from and isinstance(c, (int, float))
                        else f"<td>{esc(fmt(c))}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return wide_table(head, body)


def image(png: bytes, alt: str, caption: Optional[str] = None) -> str:
    """A PNG as an inline ``data:`` URI in a figure (anything that is not a PNG is named, not embedded)."""
    if not png.startswith(PNG_SIGNATURE):
        return f"<p class=\"warn\">{esc(alt)}: not a PNG image, not shown</p>"
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption if caption is not None else alt)}</figcaption>"
    return f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{esc(alt)}\">{cap}</figure>"


def pick(candidates: Iterable[str], patterns: Iterable[str], rest: bool = True) -> list:
    """``candidates`` in the order of the first glob pattern each matches; the rest (when ``rest``) after them."""
    candidates = list(candidates)
    out = []
    for pattern in patterns:
        out += [n for n in candidates if fnmatch.fnmatchcase(n, pattern) and n not in out]
    return out + ([n for n in candidates if n not in out] if rest else [])


def figures_html(figs: dict, patterns: Iterable[str] = (), rest: bool = True, run_label: str = "") -> str:
    """The figures ``figs`` (name -> PNG) that ``patterns`` pick, in their order, each captioned with its name."""
    chosen = pick(figs, patterns, rest)
    if not chosen:
        return "<p class=\"note\">no figures logged</p>"
    return "".join(image(figs[n], n, f"{n}" + (f" ({run_label})" if run_label else "")) for n in chosen)


def when(ms: Optional[int]) -> str:
    """An MLflow time (ms since the epoch) in UTC, or "-"."""
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(info) -> str:
    """How long a run (its ``RunInfo``) took, in words; "running" while it runs."""
    if not info.start_time:
        return "-"
    if not info.end_time:
        return "running"
    seconds = max(0.0, (info.end_time - info.start_time) / 1000)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def run_line(r) -> str:
    """The line under a section's title naming the stage run ``r`` (a StageRun), and what went wrong in it."""
    info = r.run.info
    status = f"<span class=\"status-{esc(info.status)}\">{esc(info.status)}</span>"
    note = f"; {esc(r.note)}" if r.note else ""
    line = (f"<p class=\"meta\">run <b>{esc(info.run_name)}</b> <code>{esc(info.run_id)}</code>, {status}, "
            f"{esc(duration(info))}{note}</p>")
    return line + trouble(info.status, r.tags.get(names.SKIPPED_TAG), r.tags.get(names.ERROR_TAG))


def trouble(status: str, skipped: Optional[str], error: Optional[str]) -> str:
    """A warning for a run that did not finish, or that left something out for an empty split; else ""."""
    if status != "FINISHED" and skipped:
        return f"<p class=\"warn\">skipped for an empty split: {esc(skipped)}</p>"
    if status != "FINISHED":
        return f"<p class=\"warn\">this run is {esc(status)}" + (f": {esc(error)}" if error else "") + "</p>"
    if skipped:
        return f"<p class=\"warn\">left out for an empty split: {esc(skipped)}</p>"
    return ""


def not_run(what: str, mode: str) -> str:
    """A section's body when stage ``what`` has no run to show (``mode``: how runs were found)."""
    where = "in this pipeline run" if mode == "pipeline" else "in the experiment"
    return f"<p class=\"notrun\">not run: no finished <code>{esc(what)}</code> stage run {where}</p>"
