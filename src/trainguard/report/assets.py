"""The page's only style and script, inline, and the Content-Security-Policy that
pins them.

The policy allows nothing to be fetched (``default-src 'none'``) and only these two
scripts to run (by their SHA-256), so a string from the ledger that escaped our
escaping still could not execute, and opening the file makes no network request.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

from trainguard.report.svg import SEVERITY_COLOURS

CSS: Final = """
:root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
 color:#1d2330;background:#fff}
body{margin:0 auto;max-width:1000px;padding:16px 24px 48px;line-height:1.4}
h1{font-size:22px;margin:8px 0}h3{font-size:15px;margin:14px 0 4px}
h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d6dae2}
.meta{color:#4a5263;font-size:13px}.meta code{font-size:12px}
.banner{padding:10px 14px;border-radius:6px;font-weight:600;margin:12px 0;border:2px solid}
.banner.verified{background:#e6f4ea;border-color:#2e7d32;color:#1b5e20}
.banner.unsigned,.banner.unchecked_heads{background:#fff8e1;border-color:#c77c02;color:#6d4c00}
.banner.failed{background:#fde7ea;border-color:#b00020;color:#7f0015;font-size:18px}
.chips span{display:inline-block;padding:2px 10px;border-radius:12px;margin-right:6px;
 color:#fff;font-weight:600}
.sev-none{background:#8a93a3}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #e3e6eb;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f3f5f8;cursor:pointer;user-select:none;white-space:nowrap}
td.sev{color:#fff;font-weight:700;text-transform:uppercase;font-size:11px;white-space:nowrap}
td.msg{max-width:420px;overflow-wrap:anywhere}
tr.hidden{display:none}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:11px;margin:2px 0;
 max-height:240px;overflow:auto}
.who{font-size:11px;color:#4a5263;overflow-wrap:anywhere}
.nodata{color:#6b7385;font-style:italic}
.note{color:#6b7385;font-size:12px;margin-left:8px}
.controls{margin:6px 0;font-size:13px}.controls label{margin-right:10px}
svg.plot{display:block;max-width:100%;height:auto;font-size:11px}
svg .area{fill:#fbfcfd;stroke:#c9ced8}svg .grid{stroke:#eceef2}
svg .tick{fill:#4a5263}svg .axis{fill:#1d2330;font-weight:600}
svg .series{fill:none;stroke-width:1.4}svg .mark{stroke-width:1.5;stroke-dasharray:4 3}
svg .nonfinite{stroke:#b00020;stroke-width:2}
.legend{font-size:12px;margin:2px 0 10px 64px}.key{margin-right:12px;white-space:nowrap}
.key i{display:inline-block;width:12px;height:3px;margin-right:4px;vertical-align:middle}
.ok{color:#2e7d32;font-weight:600}.bad{color:#b00020;font-weight:600}.warn{color:#c77c02;font-weight:600}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:13px;margin:6px 0}
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}
#js-errors:empty{display:none}#js-errors{color:#b00020}
""" + "".join(f".sev-{name}{{background:{colour}}}" for name, colour in SEVERITY_COLOURS.items())

GUARD_JS: Final = (
    "window.__tgErrors=[];window.addEventListener('error',function(e){"
    "window.__tgErrors.push(String(e.message));var d=document.getElementById('js-errors');"
    "if(d){d.textContent=window.__tgErrors.join('\\n');}});"
)
"""Runs first: records script errors into ``#js-errors`` (the browser tests read it)."""

PAGE_JS: Final = r"""
(function(){
'use strict';
var table=document.getElementById('findings-table');
function apply(){
  if(!table){return;}
  var text=(document.getElementById('f-text').value||'').toLowerCase();
  var boxes=document.querySelectorAll('input.f-sev');var on={};
  for(var i=0;i<boxes.length;i++){on[boxes[i].value]=boxes[i].checked;}
  var rows=table.tBodies[0].rows;var shown=0;
  for(var j=0;j<rows.length;j++){
    var r=rows[j];var ok=on[r.getAttribute('data-severity')]!==false&&
      (text===''||r.textContent.toLowerCase().indexOf(text)>=0);
    r.classList.toggle('hidden',!ok);if(ok){shown++;}
  }
  var c=document.getElementById('f-count');if(c){c.textContent=shown+' shown';}
}
function sortBy(col,th){
  var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
  var dir=th.getAttribute('data-dir')==='asc'?-1:1;th.setAttribute('data-dir',dir>0?'asc':'desc');
  rows.sort(function(a,b){
    var x=a.cells[col].getAttribute('data-key')||a.cells[col].textContent;
    var y=b.cells[col].getAttribute('data-key')||b.cells[col].textContent;
    var nx=parseFloat(x),ny=parseFloat(y);
    if(!isNaN(nx)&&!isNaN(ny)){return (nx-ny)*dir;}
    return x<y?-dir:(x>y?dir:0);
  });
  for(var k=0;k<rows.length;k++){body.appendChild(rows[k]);}
}
if(table){
  var t=document.getElementById('f-text');if(t){t.addEventListener('input',apply);}
  var boxes=document.querySelectorAll('input.f-sev');
  for(var i=0;i<boxes.length;i++){boxes[i].addEventListener('change',apply);}
  var ths=table.tHead.rows[0].cells;
  for(var h=0;h<ths.length;h++){
    (function(col,th){th.addEventListener('click',function(){sortBy(col,th);});})(h,ths[h]);
  }
  apply();
}
var plots=document.querySelectorAll('svg.plot');var pts=0;
var lines=document.querySelectorAll('svg.plot polyline.series');
for(var p=0;p<lines.length;p++){pts+=parseInt(lines[p].getAttribute('data-points')||'0',10);}
pts+=document.querySelectorAll('svg.plot circle.dot').length;
var b=document.body;b.setAttribute('data-plots',String(plots.length));
b.setAttribute('data-points',String(pts));
if(table){var r=table.getBoundingClientRect();
  b.setAttribute('data-findings-rect',[Math.round(r.left+window.scrollX),
    Math.round(r.top+window.scrollY),Math.round(r.width),Math.round(r.height)].join(','));}
b.setAttribute('data-selfcheck',window.__tgErrors.length?'errors':'ok');
})();
"""
"""Filtering and sorting of the findings table, then a self-check the browser tests
read back from ``<body data-*>``. The plots need no script."""


def _sha256(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    f"script-src {_sha256(GUARD_JS)} {_sha256(PAGE_JS)}; base-uri 'none'; form-action 'none'"
)
"""No fetches at all; only our two scripts run; inline styles are allowed for the
legend swatches and severity cells (they carry no data from the ledger)."""
