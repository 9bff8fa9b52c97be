"""The page's JavaScript, part 3: what a mark under the pointer is (hover summary, full record for
the detail panel), and deep links: ``report.html#e=ID`` opens the event or transcript of that id.

Only drawn events carry their records; a bin of a binned lane tells its count and where, and says
so, since the records file holds each of its events.
"""

DETAIL_JS = r"""
function span(s, e) { return fmtT(s) + (e > s ? "\u2013" + fmtT(e) : ""); }
function labels(list) {
  return Array.isArray(list) ? list.map(function (t) { return t && t.label; }).join(", ") : "";
}
function gist(a) {  /* the attribute a reader wants first, for the tooltip */
  if (!a) return "";
  if (labels(a.visual_tags)) return "\nseen: " + labels(a.visual_tags);
  if (a.concept) return "\n" + a.concept + ": heard " + a.audio_class + ", seen " + a.visual_class;
  if (labels(a.alternatives)) return "\nalso: " + labels(a.alternatives);
  return "";
}
function itemOf(S, node) {
  var el = node.closest ? node.closest("[data-k]") : null;
  var row = el && el.parentNode.closest("[data-li], [data-kind]");
  if (!row) return null;
  var k = +el.dataset.k, kind = row.dataset.kind, L = row.dataset.li != null ? S.lanes[+row.dataset.li] : null;
  if (L && L.binned) {
    var b = L.items[k];
    return {el: el, title: L.label + " (binned)", short: b[2] + " " + L.label + " in " + span(b[0], b[1]),
      record: {label: L.label, start_s: b[0], end_s: b[1], events: b[2], max_confidence: b[3],
        note: "this lane has " + L.count + " events: drawn as counts per bin; the records hold each one"}};
  }
  if (L) {
    var it = L.items[k], th = S.thumbs.find(function (t) { return it.id && t[2] === it.id; });
    return {el: el, title: L.label + " " + span(it.s, it.e), img: th && th[1],
      short: L.label + "  " + span(it.s, it.e) + (it.c != null ? "  conf " + it.c.toFixed(2) : "") + gist(it.a),
      record: {type: "event", stream_id: S.id, label: L.label, start_s: it.s, end_s: it.e, confidence: it.c,
        detector: it.d || L.detector, event_id: it.id, attributes: it.a || {}}};
  }
  if (kind === "transcript") {
    var t = S.transcripts[k];
    return {el: el, title: "transcript " + span(t[0], t[1]), short: span(t[0], t[1]) + "  " + t[2],
      record: {type: "transcript", stream_id: S.id, transcript_id: t[4], start_s: t[0], end_s: t[1],
        language: t[3], text: t[2]}};
  }
  if (kind === "thumbs") {
    var p = S.thumbs[k];
    return {el: el, title: "frame at " + fmtT(p[0]), img: p[1], short: "frame at " + fmtT(p[0]),
      record: {time_s: p[0], scene_event_id: p[2]}};
  }
  if (kind === "sync") {
    var q = S.sync.points[k];
    return {el: el, title: "A/V offset at " + fmtT(q[0]),
      short: "offset " + (q[1] == null ? "unknown" : (q[1] * 1000).toFixed(0) + " ms") +
        ", confidence " + (q[2] == null ? "-" : q[2].toFixed(2)),
      record: {processed_s: q[0], av_offset_s: q[1], av_sync_confidence: q[2]}};
  }
  return null;
}
function show(info) {
  var old = document.querySelector(".sel");
  if (old) old.classList.remove("sel");
  info.el.classList.add("sel");
  detail.querySelector("h3").textContent = info.title;
  var pic = info.img ? '<img alt="" src="data:image/jpeg;base64,' + info.img + '">' : "";
  detail.querySelector(".pic").innerHTML = pic;
  detail.querySelector("pre").textContent = JSON.stringify(info.record, null, 2);
  var id = info.record.event_id || info.record.transcript_id, link = detail.querySelector("a.link");
  link.hidden = !id;
  link.setAttribute("href", "#e=" + encodeURIComponent(id || ""));
  detail.hidden = false;
}
function openId(id) {  /* report.html#e=ID: open the stream of that event or transcript and show it */
  D.streams.forEach(function (S, i) {
    var found = null;
    S.lanes.forEach(function (L, li) {
      if (!L.binned) L.items.forEach(function (it, k) {
        if (it.id === id) found = '[data-li="' + li + '"] [data-k="' + k + '"]';
      });
    });
    S.transcripts.forEach(function (t, k) {
      if (t[4] === id) found = '.lane[data-kind="transcript"] [data-k="' + k + '"]';
    });
    if (!found) return;
    var el = document.getElementById("s-" + i);
    el.open = true;
    renderStream(el);
    var node = el.querySelector(found);
    show(itemOf(S, node));
    node.scrollIntoView({block: "center"});
  });
}
function fromHash() { var m = /^#e=(.+)$/.exec(location.hash); if (m) openId(decodeURIComponent(m[1])); }
"""
