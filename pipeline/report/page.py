"""The HTML page: skeleton, CSS, an error hook, the data as inline JSON, then the drawing script.

Offline by construction: a Content-Security-Policy lets the page load nothing but its own inline
script and style and ``data:`` pictures (a stray URL would be refused, not fetched), and the JSON
has every ``/`` escaped, so no text of the records (a stream URI, a transcript) can spell a URL in
the file. The error hook comes first: any uncaught error, console.error or refused load is written
into ``#js-errors`` (shown as a red bar), which a test can read from the DOM.
"""

from __future__ import annotations

import html
import json
from typing import Any

from pipeline.report.page_app import APP_JS
from pipeline.report.page_detail import DETAIL_JS
from pipeline.report.page_draw import DRAW_JS

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:0 16px 48px;color:#1f2937;background:#fff}
h1{font-size:20px;margin:12px 0 2px} h2{font-size:16px} h3{font-size:14px;margin:14px 0 4px}
small,.sub,.meta{color:#6b7280} .notes li{color:#92400e}
#js-errors{background:#dc2626;color:#fff;padding:6px;white-space:pre-wrap}
table{border-collapse:collapse;margin:6px 0} th,td{text-align:left;padding:2px 8px;vertical-align:top}
th{color:#4b5563;font-weight:600} table.head td{max-width:900px}
.overview td,.overview th{border-bottom:1px solid #e5e7eb}
details.stream{border:1px solid #d1d5db;border-radius:6px;margin:10px 0;padding:4px 10px}
details.stream>summary{cursor:pointer;font-size:15px;padding:4px 0}
.tools{margin:8px 0 4px}.hint{color:#9ca3af;margin-left:8px}
.timeline{display:flex;border-top:1px solid #e5e7eb}
.names{flex:0 0 200px;overflow:hidden} .scroll{flex:1;overflow-x:auto;overflow-y:hidden}
.inner{position:relative;width:100%;min-width:300px}
.row{height:18px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;border-bottom:1px solid #f3f4f6;
position:relative}
.names .row{padding-right:6px;font-size:12px}
.row.axis{height:20px;background:#f9fafb} .row.group{height:22px;font-weight:600;background:#f3f4f6;line-height:22px}
.row.curve{height:44px} .row.sync{height:52px} .row.thumbs{height:64px;overflow:visible}
.names .row.curve,.names .row.sync{white-space:normal;line-height:1.2}
.track{display:block;width:100%;height:100%}
.tick{position:absolute;top:2px;font-size:10px;color:#6b7280;border-left:1px solid #d1d5db;padding-left:2px}
.cursor{position:absolute;top:0;bottom:0;width:0;border-left:1px solid #ef4444;pointer-events:none}
.cursor-t{position:absolute;top:2px;font-size:10px;background:#ef4444;color:#fff;padding:0 2px;pointer-events:none}
.none{color:#9ca3af;font-style:italic;padding-left:4px;line-height:18px}
.th{position:absolute;top:2px;height:60px;transform:translateX(-50%);border:1px solid #fff;box-shadow:0 0 2px #6b7280;
cursor:pointer}
.th:hover{z-index:2;outline:2px solid #2563eb}
rect.ev,rect.bin{cursor:pointer} line.ev{stroke-width:3px;cursor:pointer}
.g-video{--c:#2563eb}.g-audio{--c:#059669}.g-speech{--c:#d97706}.g-scenes{--c:#7c3aed}.g-audio_tags{--c:#0d9488}
.g-visual_tags{--c:#4f46e5}.g-av{--c:#db2777}.g-faces{--c:#ea580c}.g-problems{--c:#dc2626}.g-other{--c:#475569}
.lane rect{fill:var(--c)} .lane line.ev{stroke:var(--c)} .lane rect.bin{fill-opacity:.7}
rect.tr{fill:#b45309;fill-opacity:.55} .sel{outline:2px solid #111;stroke:#111 !important;fill-opacity:1 !important}
.lane rect.ev{stroke:#fff;stroke-width:1px;vector-effect:non-scaling-stroke}
path.mean{fill:none;stroke:#1d4ed8;stroke-width:1.5px} path.peak{fill:none;stroke:#93c5fd;stroke-width:1px}
path.conf{fill:#fde68a;fill-opacity:.6} path.offset{fill:none;stroke:#b91c1c;stroke-width:1.5px}
rect.pt{fill:#b91c1c;cursor:pointer} rect.pt.unknown{fill:#9ca3af} line.zero{stroke:#d1d5db}
line.final{stroke:#7f1d1d;stroke-dasharray:6 4;stroke-width:1px}
ol.transcript{max-height:320px;overflow-y:auto;padding-left:28px} ol.transcript li{cursor:pointer}
ol.transcript .t{color:#6b7280;font-variant-numeric:tabular-nums} ol.transcript .lang{color:#b45309}
#tip{position:fixed;z-index:10;max-width:420px;background:#111827;color:#f9fafb;padding:4px 6px;border-radius:4px;
white-space:pre-wrap;pointer-events:none;font-size:12px}
#detail{position:fixed;right:12px;bottom:12px;width:380px;max-height:60vh;overflow:auto;background:#fff;z-index:9;
border:1px solid #9ca3af;border-radius:6px;box-shadow:0 2px 10px rgba(0,0,0,.2);padding:6px 10px}
#detail pre{font-size:11px;white-space:pre-wrap;word-break:break-all} #detail button{float:right}
#detail .pic img{width:320px}
"""

# Before anything else runs: errors of any later script, console.error and CSP refusals land in the DOM.
HOOK_JS = """
(function () {
  var box = document.getElementById("js-errors");
  function note(text) { box.hidden = false; box.textContent += text + "\\n"; }
  window.addEventListener("error", function (e) { note("error: " + e.message + " (line " + e.lineno + ")"); });
  window.addEventListener("unhandledrejection", function (e) { note("unhandled rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) { note("refused to load " + e.blockedURI); });
  var original = console.error;
  console.error = function () {
    note("console.error: " + Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
})();
"""


def embed_json(data: Any) -> str:
    """JSON safe inside <script>: no '<', '>', '&' (no </script>, no comment), no '/' (no URL)."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # Outside strings JSON has none of these characters, so escaping them everywhere is safe.
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("/", "\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def page(title: str, subtitle: str, notes: list[str], data: dict[str, Any]) -> str:
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<div id="js-errors" hidden></div>
<script>{HOOK_JS}</script>
<h1>{html.escape(title)}</h1>
<div class="meta">{html.escape(subtitle)}</div>
<ul class="notes" id="notes">{note_items}</ul>
<main id="app"><noscript>This report draws its timelines with JavaScript.</noscript></main>
<aside id="detail" hidden><button type="button" title="close (Esc)">&times;</button><h3></h3><div class="pic"></div>
<pre></pre><a class="link" hidden>link to this moment</a></aside>
<div id="tip" hidden></div>
<script type="application/json" id="report-data">{embed_json(data)}</script>
<script>
(function () {{
"use strict";
{DRAW_JS}
{DETAIL_JS}
{APP_JS}
}})();
</script>
</body></html>
"""
