"""The page's JavaScript, part 1: drawing one stream's timeline as HTML rows of inline SVG.

Every track is an SVG of viewBox width ``W`` stretched to the row (x = t / duration * W), so a zoom
only widens the rows. Strings of markup are built and set at once (innerHTML), which is far faster
than element by element for thousands of bars and needs no SVG namespace URL in the page.
"""

DRAW_JS = r"""
var W = 1000;
function esc(s) {
  return String(s).replace(/[&<>"']/g, function (c) {
    return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
  });
}
function fmtT(t, whole) {  /* seconds -> h:mm:ss.s or m:ss.s (whole: no tenths) */
  var h = Math.floor(t / 3600), m = Math.floor(t / 60) % 60, s = (t % 60).toFixed(whole ? 0 : 1);
  if (s.length < (whole ? 2 : 4)) s = "0" + s;
  return (h ? h + ":" + (m < 10 ? "0" : "") + m : m) + ":" + s;
}
function x(S, t) { return (Math.max(0, t) / S.duration_s * W).toFixed(2); }
function svg(h, body) {
  return '<svg class="track" viewBox="0 0 ' + W + ' ' + h + '" preserveAspectRatio="none">' + body + '</svg>';
}
function axisRow(S, zoom) {
  var steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
  var step = steps.find(function (s) { return S.duration_s / s <= 10 * zoom; }) || S.duration_s / (10 * zoom);
  var out = "";  /* at most 10 ticks per screen width, whatever the duration */
  for (var t = 0; t <= S.duration_s + 1e-9; t += step)
    out += '<span class="tick" style="left:' + (t / S.duration_s * 100) + '%">' + fmtT(t, step >= 1) + '</span>';
  return out + '<span class="cursor-t" hidden></span>';
}
function eventLane(S, L, li) {
  var h = 16, body = "", maxN = 1;
  if (L.binned) L.items.forEach(function (b) { maxN = Math.max(maxN, b[2]); });
  L.items.forEach(function (it, k) {
    if (L.binned) {
      var bh = Math.max(2, it[2] / maxN * (h - 2));
      body += '<rect class="bin" data-k="' + k + '" x="' + x(S, it[0]) + '" width="' +
        Math.max(0.6, x(S, it[1]) - x(S, it[0])).toFixed(2) + '" y="' + (h - 1 - bh).toFixed(1) + '" height="' +
        bh.toFixed(1) + '"/>';
    } else if (it.e <= it.s) {
      body += '<line class="ev tick" data-k="' + k + '" x1="' + x(S, it.s) + '" x2="' + x(S, it.s) +
        '" y1="1" y2="' + (h - 1) + '" vector-effect="non-scaling-stroke"/>';
    } else {
      body += '<rect class="ev" data-k="' + k + '" x="' + x(S, it.s) + '" width="' +
        Math.max(0.4, x(S, it.e) - x(S, it.s)).toFixed(2) + '" y="2" height="' + (h - 4) +
        '" fill-opacity="' + (it.c == null ? 0.8 : 0.35 + 0.65 * it.c).toFixed(2) + '"/>';
    }
  });
  return {cls: "g-" + L.group, lane: true, name: esc(L.label) + ' <small>' + L.count + (L.binned ? ", binned" : "") +
    '</small>', title: L.label + " (" + L.detector + ")", track: svg(h, body),
    attrs: 'data-li="' + li + '" data-label="' + esc(L.label) + '" data-group="' + L.group + '" data-count="' +
      L.count + '" data-drawn="' + L.items.length + '" data-binned="' + (L.binned ? 1 : 0) + '"'};
}
function transcriptLane(S) {
  var body = S.transcripts.map(function (tr, k) {
    return '<rect class="ev tr" data-k="' + k + '" x="' + x(S, tr[0]) + '" width="' +
      Math.max(0.4, x(S, tr[1]) - x(S, tr[0])).toFixed(2) + '" y="2" height="12"/>';
  }).join("");
  return {cls: "g-speech", lane: true, name: 'transcript <small>' + S.transcripts.length + '</small>',
    title: "transcript",
    track: svg(16, body), attrs: 'data-kind="transcript" data-label="transcript" data-group="speech" data-count="' +
      S.transcripts.length + '" data-drawn="' + S.transcripts.length + '" data-binned="0"'};
}
function pathOf(S, C, values, lo, hi, h) {  /* a path, broken where values are null */
  var d = "", pen = false;
  values.forEach(function (v, i) {
    if (v == null) { pen = false; return; }
    var y = (h - 2 - (v - lo) / (hi - lo) * (h - 4)).toFixed(1);
    d += (pen ? "L" : "M") + x(S, C.start_s + (i + 0.5) * C.step_s) + " " + y;
    pen = true;
  });
  return d;
}
function curveLane(S, C) {
  var h = 44, all = C.mean.concat(C.peak).filter(function (v) { return v != null; });
  var lo = Math.min.apply(null, all.length ? all : [0]), hi = Math.max.apply(null, all.length ? all : [1]);
  if (C.unit === "dBFS") lo = Math.max(lo, -120);  /* the records write digital silence as -120 */
  if (hi - lo < 1e-6) { hi += 0.5; lo -= 0.5; }
  var body = '<path class="peak" vector-effect="non-scaling-stroke" d="' + pathOf(S, C, C.peak, lo, hi, h) +
    '"/><path class="mean" vector-effect="non-scaling-stroke" d="' + pathOf(S, C, C.mean, lo, hi, h) + '"/>';
  return {cls: "curve", name: esc(C.title) + (C.unit ? ' <small>' + esc(C.unit) + '</small>' : "") +
    '<br><small>' + (+lo.toFixed(3)) + ' .. ' + (+hi.toFixed(3)) + '</small>',
    title: C.name + ": mean (dark), peak (light)", track: svg(h, body),
    attrs: 'data-kind="curve" data-curve="' + esc(C.name) + '" data-points="' + C.mean.length + '"'};
}
function syncLane(S) {
  var P = S.sync.points, F = S.sync.final, h = 52, mid = h / 2;
  var offs = P.map(function (p) { return Math.abs(p[1] || 0); }).concat([Math.abs((F && F.offset_s) || 0)]);
  var range = Math.max(0.05, 1.2 * Math.max.apply(null, offs));
  function y(o) { return (mid - o / range * (mid - 3)).toFixed(1); }
  function hline(cls, yy) {
    return '<line class="' + cls + '" x1="0" x2="' + W + '" y1="' + yy + '" y2="' + yy +
      '" vector-effect="non-scaling-stroke"/>';
  }
  var body = hline("zero", mid);
  if (P.length) {  /* confidence: shaded from the bottom, 0..1 of the lane's height, over each summary's period */
    var band = "M" + x(S, 0) + " " + h, prev = 0;
    P.forEach(function (p) {
      var yc = (h - (p[2] || 0) * h).toFixed(1);
      band += "L" + x(S, prev) + " " + yc + "L" + x(S, p[0]) + " " + yc;
      prev = p[0];
    });
    body += '<path class="conf" d="' + band + 'L' + x(S, P[P.length - 1][0]) + ' ' + h + 'Z"/>';
    var line = "", pen = false;
    P.forEach(function (p, k) {
      if (p[1] == null) {  /* no estimate then (confidence below the reporting threshold) */
        pen = false;
        body += '<rect class="pt unknown" data-k="' + k + '" x="' + x(S, p[0]) + '" y="' + (mid - 2) +
          '" width="3" height="4"/>';
        return;
      }
      line += (pen ? "L" : "M") + x(S, p[0]) + " " + y(p[1]); pen = true;
      body += '<rect class="pt" data-k="' + k + '" x="' + (x(S, p[0]) - 2) + '" y="' + (y(p[1]) - 2) +
        '" width="4" height="4"/>';
    });
    body += '<path class="offset" vector-effect="non-scaling-stroke" d="' + line + '"/>';
  }
  if (F && F.offset_s != null)
    body += hline("final", y(F.offset_s));
  var fin = !F ? "" : F.offset_s == null ? "final: unknown" : "final " + (F.offset_s * 1000).toFixed(0) + " ms";
  return {cls: "sync", name: 'A/V offset <small>&plusmn;' + (range * 1000).toFixed(0) + ' ms<br>' + fin +
    ', shade: confidence</small>', title: "A/V offset of periodic summaries (positive: audio late)",
    track: svg(h, body), attrs: 'data-kind="sync" data-points="' + P.length + '"'};
}
function emptyRow(kind, text) {
  return {cls: "empty", name: "", title: "", track: '<span class="none">' + esc(text) + '</span>',
    attrs: 'data-kind="' + kind + '"'};
}
"""
