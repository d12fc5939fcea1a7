"""One self-contained HTML page: plotly.js embedded once, figures as JSON, tables as HTML.

Why this shape:
- offline: the file carries plotly.js (from the installed `plotly` package) inline and asks
  the network for nothing, so it opens from a mail attachment or an air-gapped cluster;
- one copy of plotly.js however many figures, each figure's data in its own
  `<script type="application/json">` block, drawn by one small script;
- untrusted text (request ids, file names, reasons) never becomes markup: HTML text goes
  through `html.escape`, JSON inside `<script>` has `<`, `>`, `&` and the JavaScript line
  separators escaped, and the page only ever sets `textContent`, never `innerHTML`;
- checkable: when every `Plotly.newPlot` promise has resolved the page sets
  `data-kvpager-rendered="<count>"` on `<html>`; any script error sets
  `data-kvpager-error` and shows a banner. A headless browser (and a reader) can tell a
  complete report from a broken one.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import plotly.graph_objects as go

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #222; background: #fafafa; }
header { background: #1f3b57; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 2px 0; opacity: 0.9; }
nav { padding: 8px 32px; background: #e9eef3; font-size: 14px; }
nav a { margin-right: 14px; color: #1f3b57; }
main { padding: 8px 32px 40px 32px; max-width: 1400px; }
section { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; margin: 18px 0;
          padding: 12px 18px; }
section h2 { font-size: 18px; margin: 6px 0; }
section p.intro { color: #555; margin: 4px 0 10px 0; max-width: 1000px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f0f3f6; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.key { font-family: ui-monospace, monospace; }
#kv-error { background: #b00020; color: #fff; padding: 10px 32px; white-space: pre-wrap; }
footer { color: #777; font-size: 12px; padding: 0 32px 24px 32px; }
"""

# Runs before plotly.js so that an error anywhere later is recorded.
_HOOK = """
(function () {
  var state = {expected: %d, rendered: 0, errors: []};
  state.fail = function (err) {
    var text = String((err && (err.message || err.reason)) || err);
    state.errors.push(text);
    if (window.console) { console.error("kvpager report: " + text); }
    document.documentElement.setAttribute("data-kvpager-error", state.errors.join(" | "));
    var show = function () {
      var box = document.getElementById("kv-error");
      if (box) { box.hidden = false; box.textContent = "Report error: " + state.errors.join("; "); }
    };
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", show);
    } else { show(); }
  };
  window.addEventListener("error", function (e) { state.fail(e.error || e.message); });
  window.addEventListener("unhandledrejection", function (e) { state.fail(e.reason); });
  window.kvpagerReport = state;
})();
"""

_RENDER = """
(function () {
  var state = window.kvpagerReport;
  if (typeof Plotly === "undefined") { state.fail("plotly.js did not load"); return; }
  var divs = Array.prototype.slice.call(document.querySelectorAll("div.kv-figure"));
  var jobs = divs.map(function (div) {
    try {
      var spec = JSON.parse(document.getElementById(div.id + "-data").textContent);
      var config = {responsive: true, displaylogo: false,
                    toImageButtonOptions: {format: "svg", filename: div.id}};
      return Plotly.newPlot(div, spec.data, spec.layout, config);
    } catch (err) { return Promise.reject(err); }
  });
  Promise.all(jobs).then(function () {
    state.rendered = divs.length;
    document.documentElement.setAttribute("data-kvpager-rendered", String(divs.length));
  }, state.fail);
})();
"""


@dataclass(frozen=True)
class Section:
    """A titled part of the page: an optional figure and optional HTML below it.

    `title` and `intro` are plain text (escaped here). `body_html` must already be safe
    HTML: build it with `table_html` / `escape`, never by pasting untrusted strings.
    """

    anchor: str
    title: str
    intro: str = ""
    figure: go.Figure | None = None
    body_html: str = ""


def escape(value: object) -> str:
    """HTML text and attribute escaping (quotes included)."""
    return html.escape(str(value), quote=True)


def script_json(text: str) -> str:
    """JSON text made safe inside `<script>`: no `</script>`, comment or CDATA openers,
    and no U+2028/U+2029 (line terminators to older JavaScript parsers)."""
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _anchor_ok(anchor: str) -> bool:
    return bool(anchor) and all(c.isalnum() or c in "-_" for c in anchor) and anchor.isascii()


def table_html(headers: list[str], rows: Sequence[Sequence[object]],
               numeric: set[int] | None = None, key_column: bool = False) -> str:
    """An HTML table; every cell escaped. `numeric`: column indexes to right-align."""
    numeric = numeric or set()
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for j, cell in enumerate(row):
            cls = ' class="num"' if j in numeric else (' class="key"' if key_column and j == 0
                                                      else "")
            cells.append(f"<td{cls}>{escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_page(title: str, subtitle_lines: list[str], sections: list[Section],
                footer: str = "") -> str:
    """The whole HTML document as a string (plotly.js inline, once)."""
    from plotly.io import to_json
    from plotly.offline import get_plotlyjs

    anchors = [s.anchor for s in sections]
    for a in anchors:
        if not _anchor_ok(a):
            raise ValueError(f"section anchor must be ASCII letters, digits, '-' or '_', got "
                             f"{a!r}")
    if len(set(anchors)) != len(anchors):
        raise ValueError(f"section anchors must be unique, got {anchors}")
    figures = sum(s.figure is not None for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_HOOK % figures}</script>",
        f"<script>{get_plotlyjs()}</script>",
        "</head><body>",
        '<div id="kv-error" hidden></div>',
        f"<header><h1>{escape(title)}</h1>",
        *(f"<p>{escape(line)}</p>" for line in subtitle_lines),
        "</header>",
        "<nav>" + "".join(f'<a href="#{s.anchor}">{escape(s.title)}</a>' for s in sections)
        + "</nav>",
        "<main>",
    ]
    for s in sections:
        parts.append(f'<section id="{s.anchor}"><h2>{escape(s.title)}</h2>')
        if s.intro:
            parts.append(f'<p class="intro">{escape(s.intro)}</p>')
        if s.figure is not None:
            fig_id = f"fig-{s.anchor}"
            spec = script_json(to_json(s.figure, validate=False))
            parts.append(f'<div class="kv-figure" id="{fig_id}"></div>')
            parts.append(f'<script type="application/json" id="{fig_id}-data">{spec}</script>')
        parts.append(s.body_html)
        parts.append("</section>")
    parts += ["</main>", f"<footer>{escape(footer)}</footer>", f"<script>{_RENDER}</script>",
              "</body></html>"]
    return "\n".join(parts)

