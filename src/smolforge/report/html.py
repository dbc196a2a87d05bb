"""`smolforge report RUN`: one self-contained HTML file about a run.

No CDN, no external file: CSS and a few lines of JavaScript are inline, the charts
are static SVG drawn here, so the file reads offline and in a mail attachment.
Every figure comes from `report.stats` (`summarize`, what `show --json` prints) and
`report.profiling` (`profile`, the rest); each funnel and reject figure carries a `data-fig` attribute
naming it, which is how the browser test compares the page with `show --json`.
The sample browser (records and rejects, filterable by kind, stage and rule) is the
only script; record text is inserted with `textContent`, never as HTML.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from smolforge.report.profiling import profile
from smolforge.report.stats import summarize
from smolforge.store import atomic_write_bytes

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;background:#fafbfc}
main{max-width:1100px;margin:0 auto;padding:16px 24px 64px}
h1{font-size:22px;margin:8px 0} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px;background:#fff} td,th{border:1px solid #d0d7de;padding:3px 8px;vertical-align:top}
th{background:#f0f3f6;text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:8px 12px;margin:8px 0;border-radius:4px}
.muted{color:#57606a;font-size:12px} .grid{display:flex;flex-wrap:wrap;gap:18px}
svg text{font:11px system-ui,sans-serif} pre{white-space:pre-wrap;word-break:break-word;margin:4px 0;font-size:12px}
#sf-browser td.t{max-width:640px} select,input{font:inherit;margin-right:8px}
"""

JS = """
(function(){
  var S = JSON.parse(document.getElementById('sf-samples').textContent);
  var kind = document.getElementById('sf-kind'), stage = document.getElementById('sf-stage'),
      rule = document.getElementById('sf-rule'), q = document.getElementById('sf-q'),
      body = document.querySelector('#sf-browser tbody'), shown = document.getElementById('sf-shown');
  function opt(sel, values){
    var cur = sel.value; while (sel.options.length > 1) sel.remove(1);
    values.forEach(function(v){ var o = document.createElement('option'); o.value = v; o.textContent = v; sel.appendChild(o); });
    sel.value = values.indexOf(cur) >= 0 ? cur : '';
  }
  function uniq(a){ return a.filter(function(v, i){ return v && a.indexOf(v) === i; }).sort(); }
  function text(r){ var t = r.record.text; return typeof t === 'string' ? t : JSON.stringify(r.record); }
  function render(){
    var rs = S.filter(function(r){ return (!kind.value || r.kind === kind.value) && (!stage.value || r.stage === stage.value); });
    opt(rule, uniq(rs.map(function(r){ return r.rule || ''; })));
    var needle = q.value.toLowerCase();
    rs = rs.filter(function(r){ return (!rule.value || r.rule === rule.value) && (!needle || text(r).toLowerCase().indexOf(needle) >= 0); });
    while (body.firstChild) body.removeChild(body.firstChild);
    rs.forEach(function(r){
      var tr = document.createElement('tr'); tr.className = 'sf-row'; tr.dataset.kind = r.kind; tr.dataset.stage = r.stage; tr.dataset.rule = r.rule || '';
      [r.kind, r.stage, r.id, r.reason].forEach(function(v){ var td = document.createElement('td'); td.textContent = v == null ? '' : String(v); tr.appendChild(td); });
      var td = document.createElement('td'); td.className = 't';
      var d = document.createElement('details'), s = document.createElement('summary'), pre = document.createElement('pre');
      var t = text(r); s.textContent = t.length > 160 ? t.slice(0, 160) + '\\u2026' : t;
      pre.textContent = JSON.stringify(r.record, null, 2); d.appendChild(s); d.appendChild(pre); td.appendChild(d); tr.appendChild(td);
      body.appendChild(tr);
    });
    shown.textContent = String(rs.length);
  }
  opt(stage, uniq(S.map(function(r){ return r.stage; })));
  [kind, stage, rule].forEach(function(el){ el.addEventListener('change', render); });
  q.addEventListener('input', render);
  render();
})();
"""


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return esc(v)


def table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None,
          figs: list[list[str | None]] | None = None) -> str:
    numeric = numeric or set()
    out = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        out.append("<tr>")
        for j, v in enumerate(row):
            fig = figs[i][j] if figs and figs[i] and j < len(figs[i]) else None
            attrs = (' class="n"' if j in numeric else "") + (f' data-fig="{esc(fig)}"' if fig else "")
            out.append(f"<td{attrs}>{num(v) if j in numeric else esc(v)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


# Layout of bar labels, rotated by LABEL_ANGLE: an 11px label is at most CHAR_W
# pixels a character wide, so its extent (and the margin it needs) is known here.
CHAR_W, LABEL_CHARS, LABEL_ANGLE = 6.6, 18, 35
KEPT_COLOR, REJECTED_COLOR = "#2da44e", "#cf222e"


def bars(items: list[tuple[str, float]], title: str, width: int = 460, color: str = "#4c8bf5",
         x_title: str = "", y_title: str = "records") -> str:
    """A static SVG bar chart (vertical bars, value on top, label below)."""
    return stacked_bars([(label, [v]) for label, v in items], [("", color)], title, width, x_title, y_title)


def stacked_bars(items: list[tuple[str, list[float]]], series: list[tuple[str, str]], title: str,
                 width: int = 460, x_title: str = "", y_title: str = "records") -> str:
    """Bars of several series stacked (`series`: name, colour; a legend when more than
    one), the total on top, labels rotated below, axis titles on both axes. The
    margins are sized from the labels, so none is cut off at the chart's edge."""
    if not items:
        return f"<p class='muted'>{esc(title)}: no values</p>"
    n = len(items)
    cos, sin = math.cos(math.radians(LABEL_ANGLE)), math.sin(math.radians(LABEL_ANGLE))
    labels = [label[:LABEL_CHARS] for label, _ in items] if n <= 24 else []
    longest = max((len(t) for t in labels), default=0) * CHAR_W
    bw = min(60, max(4, (width - 52) // n - 4))
    # a label ends under its bar's centre and runs left: the first one sets the left margin
    first = len(labels[0]) * CHAR_W * cos + 11 * sin if labels else 0
    left = max(40, math.ceil(first - bw / 2) + 4)
    top, ph = (40 if len(series) > 1 else 28), 150
    axis = top + ph
    bottom = 14 + math.ceil(longest * sin + 11 * cos) + 22
    w, h = max(width, left + n * (bw + 4) + 12), axis + bottom
    hi = max(sum(vs) for _, vs in items) or 1
    parts = [f'<svg role="img" aria-label="{esc(title)}" width="{w}" height="{h}" '
             f'viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{left}" y="12">{esc(title)}</text>']
    if len(series) > 1:
        x = left
        for (name, color), total in zip(series, (sum(vs[k] for _, vs in items) for k in range(len(series)))):
            parts.append(f'<rect x="{x}" y="19" width="10" height="10" fill="{color}"/>'
                         f'<text x="{x + 14}" y="28">{esc(name)} ({num(total)})</text>')
            x += 14 + math.ceil((len(name) + 8) * CHAR_W)
    for k, (label, vs) in enumerate(items):
        x = left + k * (bw + 4)
        y = float(axis)
        for (name, color), v in zip(series, vs):
            bh = ph * v / hi
            y -= bh
            what = f"{name} {num(v)}" if name else num(v)
            parts.append(f'<rect x="{x}" y="{y:.1f}" width="{bw}" height="{bh:.1f}" fill="{color}">'
                         f'<title>{esc(label)}: {what}</title></rect>')
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle">{num(sum(vs))}</text>')
        if labels:
            parts.append(f'<text x="{x + bw / 2:.1f}" y="{axis + 14}" text-anchor="end" '
                         f'transform="rotate(-{LABEL_ANGLE} {x + bw / 2:.1f} {axis + 14})">{esc(labels[k])}</text>')
    right = left + n * (bw + 4)
    parts.append(f'<line x1="{left - 4}" y1="{axis}" x2="{right}" y2="{axis}" stroke="#888"/>'
                 f'<line x1="{left - 4}" y1="{top}" x2="{left - 4}" y2="{axis}" stroke="#888"/>')
    parts.append(_axis_titles(x_title, y_title, (left + right) / 2, h - 5, top + ph / 2))
    parts.append("</svg>")
    return "".join(parts)


def _axis_titles(x_title: str, y_title: str, x: float, y: float, y_mid: float) -> str:
    """The x-axis title centred at (x, y); the y-axis title along the left edge."""
    return (f'<text class="sf-axis-x" x="{x:.1f}" y="{y:.1f}" text-anchor="middle" fill="#57606a">'
            f'{esc(x_title)}</text><text class="sf-axis-y" x="13" y="{y_mid:.1f}" text-anchor="middle" '
            f'fill="#57606a" transform="rotate(-90 13 {y_mid:.1f})">{esc(y_title)}</text>')


def waterfall(funnel: list[dict], width: int = 1000) -> str:
    """Per stage a bar: kept (green) with the records it dropped stacked on top (red);
    records a stage created (fan-out) show as the blue part above its input."""
    if not funnel:
        return ""
    h, pad, top = 240, 40, 24
    n = len(funnel)
    slot = (width - 2 * pad) / n
    bw = min(80, slot * 0.6)
    hi = max(max(r["out"] + r["rejected"], r["in"]) for r in funnel) or 1
    sy = (h - top) / hi
    parts = [f'<svg id="sf-waterfall" role="img" aria-label="funnel" width="{width}" height="{h + 58}" '
             f'viewBox="0 0 {width} {h + 58}" xmlns="http://www.w3.org/2000/svg">']
    prev_y = None
    for k, r in enumerate(funnel):
        x = pad + k * slot + (slot - bw) / 2
        kept_h, rej_h = r["out"] * sy, r["rejected"] * sy
        parts.append(f'<rect x="{x:.1f}" y="{h - kept_h:.1f}" width="{bw:.1f}" height="{kept_h:.1f}" '
                     f'fill="#2da44e"><title>{esc(r["stage"])}: kept {r["out"]}</title></rect>')
        parts.append(f'<rect x="{x:.1f}" y="{h - kept_h - rej_h:.1f}" width="{bw:.1f}" height="{rej_h:.1f}" '
                     f'fill="#cf222e"><title>{esc(r["stage"])}: rejected {r["rejected"]}</title></rect>')
        if r["added"] > 0:
            add_h = r["added"] * sy
            parts.append(f'<rect x="{x:.1f}" y="{h - r["in"] * sy - add_h:.1f}" width="{bw / 4:.1f}" '
                         f'height="{add_h:.1f}" fill="#4c8bf5"><title>{esc(r["stage"])}: created {r["added"]}'
                         f'</title></rect>')
        if prev_y is not None:  # the level carried over from the previous stage
            parts.append(f'<line x1="{x - slot + bw:.1f}" y1="{prev_y:.1f}" x2="{x:.1f}" y2="{prev_y:.1f}" '
                         f'stroke="#888" stroke-dasharray="3 3"/>')
        prev_y = h - kept_h
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{h - kept_h - rej_h - 4:.1f}" text-anchor="middle">'
                     f'{r["out"]}' + (f' (−{r["rejected"]})' if r["rejected"] else "") + "</text>")
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{h + 16}" text-anchor="middle">{esc(r["stage"][:16])}</text>')
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{h + 30}" text-anchor="middle" fill="#57606a">'
                     f'{esc(r["type"] or "")}</text>')
    parts.append(f'<line x1="{pad}" y1="{h}" x2="{width - pad}" y2="{h}" stroke="#888"/>')
    parts.append(_axis_titles("stage", "records", width / 2, h + 50, top + (h - top) / 2))
    parts.append("</svg>")
    return "".join(parts)


def _hist(title: str, h: dict, x_title: str) -> str:
    """A histogram of `histogram`'s bins; with rejected counts in them, kept and
    rejected records stacked (where a threshold cut shows)."""
    binned = h.get("bins", [])
    if any(b.get("rejected") for b in binned):
        chart = stacked_bars([(b["label"], [b["count"], b["rejected"]]) for b in binned],
                             [("kept", KEPT_COLOR), ("rejected", REJECTED_COLOR)], title, x_title=x_title)
    else:
        chart = bars([(b["label"], b["count"]) for b in binned], title, x_title=x_title)
    extra = (f"<p class='muted'>kept n={h['n']}, mean={num(h.get('mean'))}, median={num(h.get('median'))}, "
             f"min={num(h.get('min'))}, max={num(h.get('max'))}</p>") if h.get("n") else ""
    if h.get("rejected_n"):
        extra += f"<p class='muted'>rejected n={h['rejected_n']} (dropped after they were scored)</p>"
    return f"<div>{chart}{extra}</div>"


def render(summary: dict, prof: dict) -> str:
    s, p = summary, prof
    out: list[str] = []
    add = out.append
    add("<!doctype html><html lang='en'><head><meta charset='utf-8'>")
    add(f"<title>smolforge report: {esc(s['recipe'])}</title><meta name='viewport' content='width=device-width'>")
    add(f"<style>{CSS}</style></head><body><main>")
    add(f"<h1>{esc(s['recipe'])}</h1><p class='muted'>run {esc(s['run'])} · status "
        f"<b data-fig='status'>{esc(s['status'])}</b> · {s['attempts']} attempt(s) · "
        f"<b data-fig='rows'>{s['data'].get('rows', 0)}</b> records · "
        f"{s['completion_tokens']} tokens generated · {esc(s.get('finished_at'))}</p>")
    for w in s.get("licence_warnings", []):
        add(f"<div class='warn sf-licence-warning'><b>Licence:</b> {esc(w['message'])}<br>"
            f"<span class='muted'>affected records: every record with this teacher in its meta "
            f"(e.g. {esc(', '.join(w['example_ids'][:8]))})</span></div>")
    if part := s.get("partial"):
        add(f"<div class='warn sf-partial'><b>Partial run: {esc(part['state'])}</b>"
            + (f" ({esc(part['error'])})" if part.get("error") else "")
            + f". {esc(part['note'])}:<br><code data-fig='resume'>{esc(part['resume'])}</code>")
        if part["stages"]:
            add(table(["stage", "type", "shards done", "of", "records in", "kept", "rejected", "finished"],
                      [[r["name"], r.get("type"), r["shards_done"], r.get("shards"), r.get("in", 0),
                        r.get("out", 0), r.get("rejected", 0), "yes" if r["complete"] else "no"]
                       for r in part["stages"]], {2, 3, 4, 5, 6}))
        else:
            add("<p>No stage committed a shard yet.</p>")
        add("</div>")
    for w in s.get("judge_warnings", []):
        add(f"<div class='warn sf-judge-warning'><b>Degenerate judge:</b> {esc(w)}: its scores are "
            "not a quality signal</div>")
    fails = s.get("engine_failures") or {}
    if fails.get("records"):
        add(f"<div class='warn'>{fails['records']} record(s) failed for engine reasons (not final: "
            "re-run to retry)</div>")

    add("<h2 id='funnel'>Funnel</h2>")
    add("<p class='muted'>Per stage: records in, kept (green) and rejected (red); blue: records a stage "
        "created (several samples or teachers per record, real records added by a mix). "
        "in + created = kept + rejected.</p>")
    add(waterfall(s["funnel"]))
    rows, figs = [], []
    for r in s["funnel"]:
        rows.append([r["stage"], r["type"], r["in"], r["added"], r["out"], r["rejected"]])
        st = r["stage"]
        figs.append([None, None, f"funnel/{st}/in", f"funnel/{st}/added", f"funnel/{st}/out",
                     f"funnel/{st}/rejected"])
        for g in r["reasons"]:
            rows.append(["", f"↳ {g['reason']}" + (" (engine)" if g["kind"] == "engine" else ""), "", "", "",
                         g["count"]])
            figs.append([None, None, None, None, None, f"reject/{st}/{g['reason']}"])
    add(table(["stage", "type / rule", "in", "created", "kept", "rejected"], rows, {2, 3, 4, 5}, figs))

    if p["stage_summaries"]:
        add("<h2>Stage summaries</h2>")
        for name, summ in p["stage_summaries"].items():
            add(f"<h3>{esc(name)}</h3>")
            add(table(["figure", "value"], [[k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else v]
                                           for k, v in summ.items()]))

    add("<h2 id='rejects'>Rejects by stage and rule</h2><p class='muted'>Every stage's drops grouped by "
        "rule (record-specific parts of the reason collapsed): filters, verifiers (failures by "
        "constraint), judges, dedup, decontamination.</p>")
    if s["rejects"]:
        add(table(["stage", "rule", "count", "example"],
                  [[g["stage"], g["reason"], g["count"], g["example"][:200]] for g in s["rejects"]], {2}))
    else:
        add("<p>No record was dropped.</p>")
    if s.get("contamination"):
        add("<h3>Contamination hits per benchmark</h3>")
        add(table(["benchmark", "records removed"], [[b, n] for b, n in s["contamination"].items()], {1},
                  [[None, f"contamination/{b}"] for b in s["contamination"]]))
    if p["dedup_clusters"]:
        add("<h3>Duplicate clusters</h3><p class='muted'>cluster = a kept record and the rejects naming it.</p>")
        for st, d in p["dedup_clusters"].items():
            add(f"<p>{esc(st)}: {d['clusters']} cluster(s), {d['removed']} record(s) removed</p>")
            add(bars([(f"size {k}", v) for k, v in d["sizes"].items()], f"{st}: clusters by size", 360,
                     x_title="cluster size (records)", y_title="clusters"))
            add(table(["kept record", "cluster size"], [[x["kept"], x["size"]] for x in d["largest"]], {1}))

    add("<h2 id='scores'>Scores and lengths</h2><div class='grid'>")
    for c, h in p["scores"].items():
        add(_hist(f"{c} (judge / classifier score)", h, "score"))
    for c, f in p["columns"].items():
        add(_hist(f"length of {c} in tokens", f["lengths"], "tokens"))
    profiled = ", ".join(f"{c}: {f['text_records_profiled']}" for c, f in p["columns"].items()) or "no text column"
    add(f"</div><p class='muted'>tokens: {esc(p['tokenizer'])}; text figures on {esc(profiled)} "
        f"of {p['records']} records (at most {p['max_records']} each).</p>")

    cov = p.get("knob_coverage")
    if cov:
        add("<h2 id='knobs'>Knob coverage</h2>")
        gen = cov["combinations_generated"]
        add(f"<p>knobs: {esc(', '.join(cov['knobs']))}. Combinations generated by the first stage: "
            f"<b>{'?' if gen is None else gen}</b>; still present in the data: <b>{cov['combinations_kept']}</b>.</p>")
        if cov["lost"]:
            add("<p>Combinations every record of which was dropped:</p>")
            add("<ul>" + "".join(f"<li>{esc(c)}</li>" for c in cov["lost"]) + "</ul>")
        add(table(["combination", "records kept", "records generated"],
                  [[k["combination"], k["count"], k["generated"]] for k in cov["kept"][:60]], {1, 2}))
    for knob, values in s.get("knobs", {}).items():
        add(bars([(str(v), n) for v, n in values], f"knob {knob}", 420, "#8250df", x_title=str(knob)))

    if p["teachers"]:
        add("<h2 id='teachers'>Teachers</h2>")
        add(table(["teacher", "licence", "training on outputs", "kept", "rejected", "keep rate", "mean tokens",
                   "mean scores", "proxy words / 1000", "distinct-2"],
                  [[t["teacher"], t["licence"], t["training"], t["kept"], t["rejected"], t["keep_rate"],
                    t["mean_tokens"], json.dumps(t["mean_scores"]), t["proxy_per_1000_words"], t["distinct_2"]]
                   for t in p["teachers"]], {3, 4, 5, 6, 8, 9}))
    if s.get("teachers"):
        add(table(["teacher", "licence", "name", "from", "records", "note"],
                  [[t["teacher"], t["licence"], t["licence_name"], t["licence_source"], t["records"], t["note"]]
                   for t in s["teachers"]], {4}))

    add("<h2 id='diversity'>Diversity</h2>")
    if not p["columns"]:
        add("<p>No text column to measure (name one with <code>--column</code>).</p>")
    for c, f in p["columns"].items():  # the first is the recipe's response: its figures carry the data-fig names
        d, top = f["diversity"], c == p["column"]
        add(f"<h3>{esc(c)}</h3>")
        add(table(["measure", "value"], [["distinct-1 (unique words / words)", d["distinct_1"]],
                                         ["distinct-2 (unique bigrams / bigrams)", d["distinct_2"]],
                                         ["compression ratio (raw / gzip; higher = more repetitive)",
                                          d["compression_ratio"]],
                                         ["share of records opening with a top-10 opening",
                                          d["top10_openings_share"]]],
                  {1}, [[None, "diversity/distinct_1" if top else None],
                        [None, "diversity/distinct_2" if top else None],
                        [None, "diversity/compression_ratio" if top else None], [None, None]]))
        add(f"<p class='muted'>Most common openings of {esc(c)} (first three words)</p>")
        add(table(["opening", "records"], [[o["opening"], o["count"]] for o in d["openings"]], {1}))

    px = p["proxy_words"]
    ref = px["reference"]
    add("<h2 id='proxy'>AI proxy words</h2>")
    add("<p class='muted'>Occurrences per 1,000 words of words whose use rose with LLM writing: Kobak et al. "
        "2024 (excess style words in PubMed abstracts) and Liang et al. 2024 (adjectives and adverbs of "
        f"AI-modified peer reviews). Reference: {esc(ref['corpus'])}, {ref['words']} words; {esc(ref['method'])}. "
        "The reference is technical prose: read the ratio as a flag.</p>")
    add(table(["list", "this data", "reference", "ratio"],
              [[k, v, ref["per_1000_words"].get(k), px["ratio_to_reference"].get(k)]
               for k, v in px["per_1000_words"].items()], {1, 2, 3},
              [[None, f"proxy/{k}", None, None] for k in px["per_1000_words"]]))
    rows = []
    for lst, entries in px["entries"].items():
        for e, v in entries.items():
            if v or ref["entries"][lst].get(e):
                rows.append([lst, e, v, ref["entries"][lst].get(e)])
    add(table(["list", "word", "this data", "reference"], rows, {2, 3}))
    add(f"<p class='muted'>{esc(p['column'])}: {px['share_of_texts_with_any']:.1%} of records use at least "
        "one proxy word.</p>")
    if len(p["columns"]) > 1:
        add("<h3>Per text column</h3>")
        lists = list(px["per_1000_words"])
        add(table(["column", *(f"{k} / 1000 words" for k in lists), "records with any"],
                  [[c, *(f["proxy_words"]["per_1000_words"][k] for k in lists),
                    f"{f['proxy_words']['share_of_texts_with_any']:.1%}"] for c, f in p["columns"].items()],
                  set(range(1, len(lists) + 1))))

    add("<h2 id='samples'>Sample browser</h2><p>"
        "<select id='sf-kind'><option value=''>kept and rejected</option><option value='kept'>kept</option>"
        "<option value='rejected'>rejected</option></select>"
        "<select id='sf-stage'><option value=''>every stage</option></select>"
        "<select id='sf-rule'><option value=''>every rule</option></select>"
        "<input id='sf-q' type='search' placeholder='text contains'> <span id='sf-shown'></span> shown</p>")
    add("<table id='sf-browser'><thead><tr><th>kind</th><th>stage</th><th>id</th><th>reason</th>"
        "<th>record (click to expand)</th></tr></thead><tbody></tbody></table>")
    data = json.dumps(p["samples"], ensure_ascii=False, default=str)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    add(f"<script id='sf-samples' type='application/json'>{data}</script>")
    add(f"<script>{JS}</script>")
    add("<p class='muted'>smolforge report · self-contained: no network access needed.</p></main></body></html>")
    return "".join(out)


def write_report(run_dir: str | Path, out: str | Path | None = None, *, tokenizer: str = "auto",
                 max_records: int = 20000, column: str | None = None) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no manifest.json)")
    summary = summarize(run_dir, column=column)
    prof = profile(run_dir, column=column, tokenizer=tokenizer, max_records=max_records, summary=summary)
    out = Path(out) if out else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    # renamed into place: a link at RUN/report.html is replaced, never written through
    atomic_write_bytes(out, render(summary, prof).encode("utf-8"))
    return out

