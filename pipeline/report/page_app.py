"""The page's JavaScript, part 2: the stream sections, lazy rendering, hover and clicks.

Streams past the first ``open_first`` start collapsed and are drawn when opened (the toggle event),
so a file of 50 streams costs one JSON parse and a table until someone looks at a stream.
"""

APP_JS = r"""
var D = JSON.parse(document.getElementById("report-data").textContent);
var app = document.getElementById("app"), tip = document.getElementById("tip");
var detail = document.getElementById("detail");
function tr(cells, th) {  /* a table row of cells already escaped */
  var t = th ? "th" : "td";
  return "<tr>" + cells.map(function (c) { return "<" + t + ">" + c + "</" + t + ">"; }).join("") + "</tr>";
}
function nEvents(S) { return S.lanes.reduce(function (n, L) { return n + L.count; }, 0); }
function overview() {
  if (D.streams.length < 2) return "";
  var more = D.streams.length > D.open_first ? ' <button type="button" id="open-all">open all streams</button>' : "";
  return "<h2>" + D.streams.length + " streams" + more + '</h2><table class="overview">' +
    tr(["stream", "duration", "status", "events", "transcript segments"], true) + D.streams.map(function (S, i) {
      return tr(['<a href="#s-' + i + '" data-open="' + i + '">' + esc(S.id) + "</a>", fmtT(S.duration_s),
                 esc(S.status), nEvents(S), S.transcripts.length]);
    }).join("") + "</table>";
}
function section(S, i) {
  return '<details class="stream" id="s-' + i + '" data-i="' + i + '" data-stream="' + esc(S.id) + '"' +
    (i < D.open_first ? " open" : "") + "><summary><b>" + esc(S.id) + '</b> <span class="sub">' +
    fmtT(S.duration_s) + " &middot; " + esc(S.status) + " &middot; " + nEvents(S) + " events</span></summary>" +
    '<div class="body"></div></details>';
}
function rowsOf(S) {
  var rows = [{cls: "axis", name: "time", title: "stream clock", track: axisRow(S, 1), attrs: 'data-kind="axis"'}];
  function group(g, title) {
    rows.push({cls: "group", name: esc(title), title: title, track: "",
               attrs: 'data-kind="group" data-group="' + g + '"'});
  }
  if (S.thumbs.length) rows.push({cls: "thumbs", name: "scenes <small>" + S.thumbs.length + "</small>", title: "",
    attrs: 'data-kind="thumbs"', track: S.thumbs.map(function (t, k) {
      return '<img class="th" decoding="sync" data-k="' + k + '" alt="frame at ' + fmtT(t[0]) + '" ' +
        'src="data:image/jpeg;base64,' + t[1] + '" style="left:' + (t[0] / S.duration_s * 100).toFixed(3) + '%">';
    }).join("")});
  group("signals", "Signals");
  if (S.curves.length) S.curves.forEach(function (C) { rows.push(curveLane(S, C)); });
  else rows.push(emptyRow("curves", "no signal curves in these records"));
  rows.push(S.sync.points.length || S.sync.final ? syncLane(S)
            : emptyRow("sync", "no A/V offset estimate in these records"));
  var have = {};
  S.lanes.forEach(function (L) { have[L.group] = 1; });
  if (S.transcripts.length) have.speech = 1;
  if (S.errors.length) have.problems = 1;
  Object.keys(D.groups).forEach(function (g) {
    if (!have[g]) return;
    group(g, D.groups[g]);
    S.lanes.forEach(function (L, li) { if (L.group === g) rows.push(eventLane(S, L, li)); });
    if (g === "speech" && S.transcripts.length) rows.push(transcriptLane(S));
    if (g === "problems" && S.errors.length)
      rows.push(emptyRow("errors", S.errors.length + " error record(s), listed below (they carry no stream time)"));
  });
  return rows;
}
function timeline(S) {
  var rows = rowsOf(S), zooms = [1, 2, 4, 8, 16, 32, 64];
  var options = zooms.map(function (z) {
    return '<option value="' + z + '">' + (z === 1 ? "fit" : z + "x") + "</option>";
  });
  var names = rows.map(function (r) {
    return '<div class="row ' + r.cls + '" title="' + esc(r.title) + '">' + r.name + "</div>";
  });
  var tracks = rows.map(function (r) {
    return '<div class="row ' + r.cls + (r.lane ? " lane" : "") + '" ' + r.attrs + ">" + r.track + "</div>";
  });
  return '<div class="tools">zoom <select class="zoom">' + options.join("") + "</select>" +
    '<span class="hint">hover a mark for a summary, click it for the full record</span></div>' +
    '<div class="timeline"><div class="names">' + names.join("") + '</div><div class="scroll"><div class="inner">' +
    tracks.join("") + '<div class="cursor" hidden></div></div></div></div>';
}
function lists(S) {  /* header table, notes, timeline, transcript, errors */
  var out = '<table class="head">' + S.header.map(function (r) {
    return tr(["<b>" + esc(r[0]) + "</b>", esc(r[1])]);
  }).join("") + "</table>";
  if (S.notes.length)
    out += '<ul class="notes">' + S.notes.map(function (n) { return "<li>" + esc(n) + "</li>"; }).join("") + "</ul>";
  out += timeline(S);
  var n = S.transcripts.length;
  if (n) out += "<h3>Transcript <small>" + n + ' segments</small></h3><ol class="transcript" data-kind="transcript" ' +
    'data-count="' + n + '">' + S.transcripts.map(function (t, k) {
      return '<li data-k="' + k + '"><span class="t">' + fmtT(t[0]) + "&ndash;" + fmtT(t[1]) + "</span> " +
        '<span class="lang">' + esc(t[3]) + '</span> <span class="text">' + esc(t[2]) + "</span></li>";
    }).join("") + "</ol>";
  if (S.errors.length) out += '<h3>Errors</h3><table class="errors" data-count="' + S.errors.length + '">' +
    tr(["stage", "fatal", "reason", "at (UTC)"], true) + S.errors.map(function (e) {
      var at = typeof e.at === "number" ? new Date(e.at * 1000).toISOString() : "";
      return tr([esc(e.stage), e.fatal ? "yes" : "no", esc(e.reason), at]);
    }).join("") + "</table>";
  return out;
}
function renderStream(el) {
  if (el.dataset.rendered) return;
  var S = D.streams[+el.dataset.i], body = el.querySelector(".body");
  body.innerHTML = lists(S);
  el.dataset.rendered = "1";
  var inner = body.querySelector(".inner"), cursor = body.querySelector(".cursor");
  body.querySelector(".zoom").addEventListener("change", function () {
    inner.style.width = (+this.value * 100) + "%";
    inner.querySelector(".row.axis").innerHTML = axisRow(S, +this.value);
  });
  inner.addEventListener("mousemove", function (ev) {  /* a cursor line with its time, and the mark's summary */
    var box = inner.getBoundingClientRect(), px = ev.clientX - box.left, ct = inner.querySelector(".cursor-t");
    cursor.hidden = ct.hidden = false;
    cursor.style.left = ct.style.left = px + "px";
    ct.textContent = fmtT(px / box.width * S.duration_s);
    var info = itemOf(S, ev.target);
    tip.hidden = !info;
    if (!info) return;
    tip.textContent = info.short;
    tip.style.left = (ev.clientX + 14) + "px";
    tip.style.top = (ev.clientY + 14) + "px";
  });
  inner.addEventListener("mouseleave", function () { tip.hidden = cursor.hidden = true; });
  body.addEventListener("click", function (ev) { var info = itemOf(S, ev.target); if (info) show(info); });
}
var started = performance.now();
app.innerHTML = overview() + D.streams.map(section).join("");
app.querySelectorAll("details.stream").forEach(function (el) {
  if (el.open) renderStream(el);
  el.addEventListener("toggle", function () { if (el.open) renderStream(el); });
});
app.addEventListener("click", function (ev) {
  var a = ev.target.closest("[data-open]");
  if (a) document.getElementById("s-" + a.dataset.open).open = true;
  if (ev.target.id === "open-all") app.querySelectorAll("details.stream").forEach(function (el) { el.open = true; });
});
if (/^#s-\d+$/.test(location.hash) && document.querySelector(location.hash))
  document.querySelector(location.hash).open = true;  /* a link to a stream opens (and so draws) it */
fromHash();
window.addEventListener("hashchange", fromHash);
detail.querySelector("button").addEventListener("click", function () { detail.hidden = true; });
document.addEventListener("keydown", function (ev) { if (ev.key === "Escape") detail.hidden = true; });
document.body.dataset.renderMs = (performance.now() - started).toFixed(1);
document.body.dataset.ready = "1";
"""
