"""The analysis sections: correlation between seeds, unit visualizations, transfer, the audits.

The metric, param, tag and file names correlate, visualize and audit export for their tables are imported from
them (:mod:`pipeline.report.names` imports the writers' other names)."""
from __future__ import annotations

import re

import pipeline.report.names as names
from pipeline.report.artifacts import Artifacts
from pipeline.report.html import esc, figures_html, fmt, not_run, run_line, table
from pipeline.report.runs import Found, StageRun, task_order


# -------------------------------------------------------------------------------------- per-layer tables

def layer_table(m: dict, layers: list, columns: dict) -> str:
    """One row per layer: ``columns`` maps a header to the metric name with ``{layer}`` in it."""
    rows = []
    for layer in layers:
        row = [layer] + [m.get(c.format(layer=layer), "-") for c in columns.values()]
        if any(v != "-" for v in row[1:]):
            rows.append(row)
    return table(["layer"] + list(columns), rows) if rows else ""


def layer_pattern(template: str, layer: str) -> str:
    """A regular expression of the metric names ``template`` gives, its ``{layer}`` the one group."""
    return re.escape(template).replace(re.escape("{layer}"), f"({layer})")


def layers_of(p: dict, key: str, m: dict, pattern: str) -> list:
    """The layers param ``key`` lists, else those in the metric names ``pattern`` matches (in their order)."""
    layers = [x for x in (p.get(key) or "").split(",") if x]
    if layers:
        return layers
    found = []
    for k in m:
        hit = re.fullmatch(pattern, k)
        if hit and hit.group(1) not in found:
            found.append(hit.group(1))
    return found


# ------------------------------------------------------------------------------------------- correlate

def correlate_columns() -> dict:
    """The correlate table: header -> the per-layer metric the stage logs (``{layer}`` left in)."""
    from pipeline.analysis import correlate as c

    at = {"layer": "{layer}", "method": names.MATCHING_METHOD}
    return {"matched units' mean correlation": c.MATCHED.format(**at),
            "vs a random net": c.BASELINE.format(base=c.RANDOM, **at),
            "vs permuted images": c.BASELINE.format(base=names.PERMUTED, **at),
            "CKA": c.CKA, "CKA debiased": c.CKA_DEBIASED, "SVCCA": c.SVCCA,
            "units without a good match": c.UNMATCHED, "mutual information (bits)": c.MUTUAL_INFORMATION}


def correlate_section(found: Found, art: Artifacts) -> str:
    """The nets compared, one row of similarity measures per layer, and the stage's figures."""
    r = found.get("correlate")
    if r is None:
        return not_run("correlate", found.mode)
    from pipeline.analysis import correlate as c

    m, p = r.metrics, r.params
    layers = layers_of(p, c.LAYERS_PARAM, m, layer_pattern(c.CKA, "[^.]+"))
    out = [run_line(r), f"<p>Nets compared: <code>{esc(p.get(c.MODELS_PARAM, '?'))}</code>; probe: "
                        f"{esc(fmt(m.get(c.PROBE_SAMPLES, '?')))} images of "
                        f"<code>{esc(p.get(c.PROBE_PARAM, '?'))}</code>.</p>"]
    out.append(layer_table(m, layers, correlate_columns()))
    out.append("<p class=\"note\">Matched correlation: the mean correlation of each unit of net 0 with its one-to-one "
               "(Hungarian) partner in net 1, beside the same for a randomly initialised net and for permuted "
               "images.</p>")
    out.append(figures_html(art.figures(r.id), names.CORRELATE_FIGURES))
    return "".join(out)


# ------------------------------------------------------------------------------------------- visualize

def visualize_columns() -> dict:
    """The visualize table: header -> the per-layer metric the stage logs (``{layer}`` left in)."""
    from pipeline.analysis import visualize as v

    return {"median activation / best real image's": v.RATIO_MEDIAN, "objective gain": v.OBJECTIVE_GAIN}


def visualize_section(found: Found, art: Artifacts) -> str:
    """The model, one row per layer, and the stage's grids (one per layer, then the filters and the dream)."""
    r = found.get("visualize")
    if r is None:
        return not_run("visualize", found.mode)
    from pipeline.analysis import visualize as v

    m, p = r.metrics, r.params
    layers = layers_of(p, v.LAYERS_PARAM, m, layer_pattern(v.RATIO_MEDIAN, ".+"))
    out = [run_line(r), f"<p>Model <code>{esc(p.get(v.MODEL_PARAM, '?'))}</code>. Each row: a "
                        f"unit's synthetic image (activation reached as a multiple of its best real image's), "
                        f"its facets, and the real patches that excite it most.</p>"]
    out.append(layer_table(m, layers, visualize_columns()))
    per_layer, *rest = names.VISUALIZE_FIGURES
    out.append(figures_html(art.figures(r.id), [per_layer.format(layer=layer) for layer in layers] + rest))
    return "".join(out)


# -------------------------------------------------------------------------------------------- transfer

def transfer_section(found: Found, art: Artifacts) -> str:
    """What was trained and tested, one table per split (base nets, the grid of variants by layer), the
    training-set-size table, and the stage's figures."""
    r = found.get("transfer")
    if r is None:
        return not_run("transfer", found.mode)
    m, p = r.metrics, r.params
    grid, base, sizes = transfer_means(m)
    out = [run_line(r), f"<p>{esc(fmt(m.get(names.TRAININGS, '?')))} trainings in "
                        f"{esc(fmt(m.get(names.GRID_SECONDS, '?')))} s; {transfer_where(m, p)}, mean over seeds.</p>"]
    layers = [x for x in (p.get(names.TRANSFER_LAYERS) or "").split(",") if x] or sorted(
        {layer for split in grid.values() for per in split.values() for layer in per})
    splits = sorted(set(grid) | set(base))
    out += [split_tables(split, base.get(split), grid.get(split), layers) for split in splits]
    if sizes:
        out.append(sizes_table(sizes))
    per_split, *rest = names.TRANSFER_FIGURES
    out.append(figures_html(art.figures(r.id), [per_split.format(split=split) for split in splits] + rest))
    return "".join(out)


def transfer_where(m: dict, p: dict) -> str:
    """What the accuracies are of (HTML): half B's test split, or, for ``transfer.mode=sizes``, the dataset's."""
    if p.get(names.TRANSFER_MODE) != names.MODE_SIZES:
        return "test accuracy on half B"
    model, layers, head = (p.get(k, "?") for k in names.TRANSFER_INIT)
    as_is = (f"; the model as it is, before fine-tuning: {esc(fmt(m[names.AS_IS]))}" if names.AS_IS in m else "")
    return (f"test accuracy on <code>{esc(p.get(names.TRANSFER_DATA, '?'))}</code>'s test split, from scratch "
            f"and fine-tuned from <code>{esc(model)}</code> (copied {esc(layers)}; head {esc(head)})" + as_is)


def transfer_means(m: dict) -> tuple[dict, dict, dict]:
    """The ``*.mean`` metrics as ``grid[split][variant][layer]``, ``base[split][net]`` and
    ``sizes[variant][n<size>]``."""
    grid: dict = {}
    base: dict = {}
    sizes: dict = {}
    for k, v in m.items():
        if not k.endswith(names.MEAN_SUFFIX):
            continue
        parts = k[:-len(names.MEAN_SUFFIX)].split(".")
        if parts[0] == names.SIZES_PREFIX and len(parts) == 3:
            sizes.setdefault(parts[1], {})[parts[2]] = v
        elif len(parts) == 3:
            grid.setdefault(parts[0], {}).setdefault(parts[1], {})[parts[2]] = v
        elif len(parts) == 2:
            base.setdefault(parts[0], {})[parts[1]] = v
    return grid, base, sizes


def split_tables(split: str, base: dict, grid: dict, layers: list) -> str:
    """One split's base nets and its grid of variants by layer."""
    out = [f"<h3>Split {esc(split)}</h3>"]
    if base:
        out.append(table(["base net", "accuracy"], sorted(base.items())))
    if grid:
        out.append(table(["variant"] + layers, [[v] + [per.get(layer, "-") for layer in layers]
                                               for v, per in sorted(grid.items())]))
    return "".join(out)


def sizes_table(sizes: dict) -> str:
    """Accuracy per variant and training-set size (``n<size>``, smallest first)."""
    ns = sorted({n for per in sizes.values() for n in per}, key=lambda n: int(n[1:]) if n[1:].isdigit() else 0)
    return ("<h3>Training-set size</h3>"
            + table(["variant"] + [n[1:] + " images" for n in ns],
                    [[v] + [per.get(n, "-") for n in ns] for v, per in sorted(sizes.items())]))


# ----------------------------------------------------------------------------------------------- audit

def audit_section(found: Found, art: Artifacts) -> str:
    """Each net's audit (one per task in a pipeline run), the registry gate's decision first."""
    runs = sorted(found.all("audit"), key=lambda r: task_order(r.task))
    if not runs:
        return not_run("audit", found.mode)
    return "".join((f"<h3>{esc(r.task or 'audit')}</h3>" if len(runs) > 1 else "") + audit_one(r, art)
                   for r in runs)


def audit_one(r: StageRun, art: Artifacts) -> str:
    """One audit run: the model and data, the gate, the context audit, the independence audit, other figures."""
    from pipeline.analysis import audit as a

    p, figs = r.params, art.figures(r.id)
    out = [run_line(r), f"<p>Model <code>{esc(p.get(a.MODEL_PARAM, '?'))}</code> on "
                        f"<code>{esc(p.get(a.DATA_PARAM, '?'))}</code>.</p>", gate(r.tags)]
    out.append(context_audit(r, art, figs))
    out.append(independence_audit(r, figs))
    shown = names.CONTEXT_FIGURES + (names.INDEPENDENCE_FIGURE,)
    rest = [n for n in figs if n not in shown]
    if rest:
        out.append(figures_html({n: figs[n] for n in rest}))
    return "".join(out)


def gate(tags: dict) -> str:
    """The registry gate's line, as a verdict when it passed and a warning when not ("" without a gate)."""
    line = tags.get(names.GATE_LINE)
    if not line:
        return ""
    passed = tags.get(names.GATE_PASSED) == "true"
    return f"<h4>Registry gate</h4><p class=\"{'verdict' if passed else 'warn'}\">{esc(line)}</p>"


def verdict(said) -> str:
    """A verdict in words, set apart."""
    return f"<p class=\"verdict\">{esc(said)}</p>"


def prefixed_rows(m: dict, prefix: str) -> list:
    """``[(name, value)]`` of the metrics named ``<prefix><name>``, sorted."""
    return sorted((k[len(prefix):], v) for k, v in m.items() if k.startswith(prefix))


def context_audit(r: StageRun, art: Artifacts, figs: dict) -> str:
    """Does the net look at the object or its context: the verdict, its notes, the metrics, the figures."""
    from pipeline.analysis import audit as a

    said = r.tags.get(a.CONTEXT_VERDICT)
    out = ["<h4>Does the net look at the object or at its context?</h4>",
           verdict(said) if said else "<p class=\"warn\">no context verdict</p>"]
    text = art.read(r.id, a.CONTEXT_NOTES)
    notes = [line[2:] for line in (text or b"").decode("utf-8", "replace").splitlines() if line.startswith("- ")]
    if notes:
        out.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    rows = prefixed_rows(r.metrics, names.CONTEXT_PREFIX)
    if rows:
        out.append(table(["context metric", "value"], rows))
    out.append(figures_html(figs, names.CONTEXT_FIGURES, rest=False))
    return "".join(out)


def independence_audit(r: StageRun, figs: dict) -> str:
    """Is the test set independent of train: the verdict, the metrics, the figure."""
    from pipeline.analysis import audit as a

    said = r.tags.get(a.INDEPENDENCE_VERDICT)
    out = ["<h4>Is the test set independent of train?</h4>",
           verdict(said) if said else "<p class=\"warn\">no independence verdict</p>"]
    rows = prefixed_rows(r.metrics, names.INDEPENDENCE_PREFIX)
    if rows:
        out.append(table(["independence metric", "value"], rows))
    out.append(figures_html(figs, (names.INDEPENDENCE_FIGURE,), rest=False))
    return "".join(out)
