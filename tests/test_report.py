"""avfuse report: real replays rendered to HTML and opened in a real headless Chromium.

One module-wide replay of a real clip with speech (nasa_13013) and the synthetic sample clip, through
the session's pretrained pipeline (conftest), is split into three records files: each clip alone and both.
Their pages are checked from the DOM Chromium dumps after the scripts ran: lanes and counts equal the
records, transcripts are listed, thumbnails are taken, no script error, a deep link opens the detail
panel. Synthetic records (benchmarks.bench_report) cover a 1-hour stream, 50 streams, the coming
``signals`` records and bad input.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_report import synthetic_records
from pipeline.app.sample import write_clip
from pipeline.report.curves import MAX_POINTS, build_curves
from pipeline.report.lanes import N_BINS
from pipeline.report.render import main, render_report
from tests.browser import PageRun, chromium, dump_dom, parse_dom, png_pixels, screenshot
from tests.conftest import SHARED_MEDIA, _replayer

NASA = SHARED_MEDIA / "nasa_13013.mp4"
LOAD_LIMIT_S = 15.0  # the whole Chromium run (start, load, scripts, DOM dump); about 2 s here
NETWORK = re.compile(r"https?://|//cdn|src=[\"']//|url\(|fetch\(|XMLHttpRequest|<link\b|<iframe\b", re.I)


@dataclass
class Replayed:
    folder: Path
    records: list[dict]
    files: dict[str, Path]  # "nasa", "sample", "both" -> records file
    pages: dict[str, Path]  # the same -> HTML report
    runs: dict[str, PageRun]  # the same -> Chromium's DOM; "nasa" and "sample" opened with a deep link

    def of(self, kind: str, stream_id: str) -> list[dict]:
        return [r for r in self.records if r["type"] == kind and r["stream_id"] == stream_id]


@pytest.fixture(scope="session", autouse=True)
def chromium_installed():
    chromium()  # before the replay's minutes: fail at once, with the fix, when it is missing


@pytest.fixture(scope="module")
def replayed(pretrained_pipeline, tmp_path_factory) -> Replayed:
    """One replay of both clips through the session's default (pretrained) pipeline, as test_replay's."""
    folder = tmp_path_factory.mktemp("report")
    sample = write_clip(folder / "sample.mp4")
    run = _replayer(pretrained_pipeline, folder)(NASA, sample)
    assert [r.status for r in run.results] == ["ok", "ok"], [r.reason for r in run.results]
    lines = [json.dumps(r) for r in run.records]
    files = {"both": folder / "both.jsonl"}
    files["both"].write_text("".join(f"{line}\n" for line in lines))
    for name, stream_id in (("nasa", NASA.name), ("sample", sample.name)):
        files[name] = folder / f"{name}.jsonl"
        mine = [line for line, r in zip(lines, run.records) if r["stream_id"] == stream_id]
        files[name].write_text("".join(f"{line}\n" for line in mine))
    pages = {name: render_report(path, media=[sample, SHARED_MEDIA]).out_path for name, path in files.items()}
    scene = next(r for r in run.records if r.get("label") == "scene" and r["stream_id"] == sample.name)
    transcript = next(r for r in run.records if r["type"] == "transcript")
    runs = {"both": dump_dom(pages["both"]), "sample": dump_dom(pages["sample"], f"#e={scene['event_id']}"),
            "nasa": dump_dom(pages["nasa"], f"#e={transcript['transcript_id']}")}
    return Replayed(folder, run.records, files, pages, runs)


def _assert_clean(run: PageRun) -> None:
    dom = parse_dom(run.dom)
    assert dom.find_all("body", data_ready="1"), "the page's script did not finish"
    errors = dom.find_all(id="js-errors")[0]
    assert errors.text().strip() == "" and "hidden" in errors.attrs, errors.text()
    assert run.console == [], run.console  # the page logs nothing; Chromium logs uncaught errors here
    assert run.wall_s < LOAD_LIMIT_S


@pytest.mark.parametrize("name", ["sample", "nasa", "both"])
def test_lanes_and_counts_equal_the_records(replayed, name):
    run = replayed.runs[name]
    _assert_clean(run)
    sections = parse_dom(run.dom).find_all("details", class_="stream")
    # Streams appear in the order the file starts them (two concurrent streams start in either order).
    started = [r["stream_id"] for r in replayed.records if r["type"] == "stream_start"]
    expected_streams = {"sample": ["sample.mp4"], "nasa": [NASA.name], "both": started}[name]
    assert sorted(started) == sorted([NASA.name, "sample.mp4"])
    assert [s.attrs["data-stream"] for s in sections] == expected_streams
    for section in sections:
        stream_id = section.attrs["data-stream"]
        events = replayed.of("event", stream_id)
        drawn = Counter()
        for lane in section.find_all(class_="lane"):
            count = int(lane.attrs["data-count"])
            assert lane.attrs["data-binned"] == "0" and len(lane.find_all(class_="ev")) == count
            if lane.attrs.get("data-kind") == "transcript":
                assert count == len(replayed.of("transcript", stream_id))
            else:
                drawn[lane.attrs["data-label"]] += count
        assert drawn == Counter(e["label"] for e in events)
        final = next(s for s in replayed.of("summary", stream_id) if s["final"])
        assert drawn == Counter(final["counts_by_label"])  # what the replay itself counted
        # Signal curves when the replay wrote signals records (a newer pipeline); else the lane says so.
        if replayed.of("signals", stream_id):
            curves = section.find_all(data_kind="curve")
            assert curves and all(int(c.attrs["data-points"]) > 0 for c in curves)
        else:
            assert "no signal curves in these records" in section.text()


def test_transcripts_are_listed_and_a_deep_link_shows_one(replayed):
    dom = parse_dom(replayed.runs["nasa"].dom)
    transcripts = replayed.of("transcript", NASA.name)
    assert len(transcripts) >= 2  # nasa_13013 is narrated
    listed = dom.find_all("ol", class_="transcript")[0]
    assert int(listed.attrs["data-count"]) == len(listed.find_all("li")) == len(transcripts)
    for t in transcripts:
        assert t["text"].strip() in listed.text()
    detail = dom.find_all("aside", id="detail")[0]
    assert "hidden" not in detail.attrs
    shown = json.loads(detail.find_all("pre")[0].text())
    assert shown["transcript_id"] == transcripts[0]["transcript_id"] and shown["text"] == transcripts[0]["text"].strip()


def test_scene_thumbnails_and_the_detail_panel(replayed):
    dom = parse_dom(replayed.runs["sample"].dom)
    scenes = replayed.of("event", "sample.mp4")
    scenes = [e for e in scenes if e["label"] == "scene"]
    thumbs = dom.find_all("img", class_="th")
    assert len(thumbs) == len(scenes) == 4
    assert all(t.attrs["src"].startswith("data:image/jpeg;base64,/9j/") for t in thumbs)  # JPEGs start FF D8 FF
    detail = dom.find_all("aside", id="detail")[0]
    shown = json.loads(detail.find_all("pre")[0].text())
    first = scenes[0]
    assert {k: shown[k] for k in ("event_id", "label", "detector", "attributes")} == \
        {k: first[k] for k in ("event_id", "label", "detector", "attributes")}
    assert shown["start_s"] == pytest.approx(first["start_s"], abs=1e-3)
    assert detail.find_all("img")[0].attrs["src"].startswith("data:image/jpeg;base64,")


def test_the_error_check_sees_errors(replayed, tmp_path):
    broken = tmp_path / "broken.html"
    page = replayed.pages["sample"].read_text()
    broken.write_text(page.replace("</body>", "<script>noSuchFunction();</script></body>"))
    run = dump_dom(broken)
    assert "noSuchFunction" in parse_dom(run.dom).find_all(id="js-errors")[0].text()
    assert any("noSuchFunction" in line for line in run.console)


# Moves the pointer onto every mark of the drawn streams and clicks it, noting what the page showed.
POINT_AND_CLICK = """<script>
(function () {
  var seen = [], tip = document.getElementById("tip");
  document.querySelectorAll("details.stream[data-rendered] [data-k]").forEach(function (el) {
    var box = el.getBoundingClientRect(), inTimeline = !!el.closest(".inner");
    el.dispatchEvent(new MouseEvent("mousemove", {bubbles: true, clientX: box.left + 1, clientY: box.top + 1}));
    var hover = inTimeline && !tip.hidden ? tip.textContent : null;
    el.dispatchEvent(new MouseEvent("click", {bubbles: true}));
    seen.push({timeline: inTimeline, hover: hover, selected: el.classList.contains("sel"),
               detail: document.querySelector("#detail pre").textContent});
  });
  var out = document.createElement("pre");
  out.id = "seen";
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
})();
</script>"""


def test_every_mark_answers_hover_and_click(replayed, tmp_path):
    page = tmp_path / "pointed.html"
    page.write_text(replayed.pages["both"].read_text().replace("</body>", POINT_AND_CLICK + "</body>"))
    run = dump_dom(page)
    _assert_clean(run)
    seen = json.loads(parse_dom(run.dom).find_all(id="seen")[0].text())
    events = [r for r in replayed.records if r["type"] == "event"]
    transcripts = [r for r in replayed.records if r["type"] == "transcript"]
    thumbs = [e for e in events if e["label"] == "scene"]
    # every event, transcript (in its lane and in the list) and thumbnail
    assert len(seen) == len(events) + 2 * len(transcripts) + len(thumbs)
    assert all(s["selected"] and s["detail"] for s in seen)
    assert all(s["hover"] for s in seen if s["timeline"])
    hovered = "\n".join(s["hover"] for s in seen if s["timeline"])
    for t in transcripts:  # the words said, on hover
        assert t["text"].strip() in hovered
    shown_ids = {json.loads(s["detail"]).get("event_id") for s in seen}
    assert {e["event_id"] for e in events} <= shown_ids


def test_screenshot_is_not_blank(replayed, tmp_path):
    png = tmp_path / "report.png"
    assert screenshot(replayed.pages["both"], png, window="1200,900") < LOAD_LIMIT_S
    pixels = png_pixels(png).astype(float)
    assert pixels.shape == (900, 1200, 3)
    assert pixels.std() > 25 and (pixels.min(axis=2) < 200).mean() > 0.03  # drawn, not a white page (0.065 here)


def test_pages_reference_no_network(replayed, tmp_path):
    pages = list(replayed.pages.values()) + [render_report(_signals_fixture(tmp_path)).out_path]
    for page in pages:
        text = page.read_text()
        assert NETWORK.search(text) is None, (page, NETWORK.search(text))
        assert "Content-Security-Policy" in text
    for run in replayed.runs.values():  # what the scripts made: pictures from data: only
        sources = [n.attrs["src"] for n in parse_dom(run.dom).find_all(src=True)]
        assert sources and all(s.startswith("data:") for s in sources)


def _signals_fixture(folder: Path) -> Path:
    """A hand-made stream with what replays do not write yet: signals records (out of order, with
    gaps), outage and discontinuity events, an error record; also URLs in its text, records of an
    unknown type, and a last line cut short."""
    def rec(kind: str, **body) -> dict:
        return {"schema": f"avfuse.{kind}/1", "type": kind, "stream_id": "cam", **body}

    def event(n: int, label: str, start_s: float, end_s: float, detector: str) -> dict:
        return rec("event", label=label, start_s=start_s, end_s=end_s, confidence=0.8, detector=detector,
                   detector_version="1", event_id=f"00000000-0000-4000-8000-{n:012d}", attributes={"n": n})

    def signals(start_s: float, loudness: list) -> dict:
        return rec("signals", start_s=start_s, step_s=1.0, loudness_dbfs={"mean": loudness, "peak": loudness},
                   luma={"mean": [0.2, 0.3, None, 0.5], "peak": [0.3, 0.4, None, 0.6]},
                   motion={"mean": [0.0, 0.1, 0.1, 0.0], "peak": [0.1, 0.2, 0.2, 0.1]})

    def summary(processed_s: float, offset_s: float | None, confidence: float, final: bool = False) -> dict:
        return rec("summary", final=final, processed_s=processed_s, wall_s=1.0, speed_x_realtime=4.0,
                   counts_by_label={}, av_offset_s=offset_s, av_sync_confidence=confidence)

    records = [rec("stream_start", uri="https://camera.example/live", started_at=1.7e9, duration_s=12.0,
                   video=None, audio=None),
               event(1, "scene_cut", 4.0, 4.0, "scene_cut"), event(2, "ingest_outage", 5.0, 6.5, "ingest"),
               event(3, "stream_discontinuity", 7.0, 7.0, "ingest"),
               rec("transcript", transcript_id="00000000-0000-4000-8000-000000000009", start_s=1.0, end_s=3.0,
                   text="details at https://example.org/page", language="en"),
               signals(8.0, [-20.0, -21.0, -22.0, -23.0]), signals(0.0, [-30.0, None, -32.0, -33.0]),
               signals(4.0, [-40.0, -41.0, -42.0, -43.0]),
               summary(4.0, 0.04, 0.9), summary(8.0, None, 0.5), summary(12.0, 0.03, 0.95),
               summary(12.0, 0.035, 0.92, final=True),
               rec("error", stage="decode", reason="corrupt packet skipped", uri=None, fatal=False, at=1.7e9,
                   input=None),
               *[{"schema": "avfuse.foo/1", "type": "foo", "stream_id": "cam", "n": i} for i in range(3)],
               "a line that is no record",
               rec("stream_end", status="ok", reason=None, processed_s=12.0, wall_s=3.0, events=3, frames_decoded=0,
                   frames_kept=0, decode_errors=0)]
    path = folder / "signals.jsonl"
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("".join(f"{line}\n" for line in lines) + '{"schema":"avfuse.event/1","type":"ev')
    return path


def test_signals_offsets_problems_and_skipped_records(tmp_path, capsys):
    path = _signals_fixture(tmp_path)
    assert main([str(path)]) == 0
    notes = capsys.readouterr().err.splitlines()
    assert notes == ["avfuse: report: skipped 3 records of types: foo",
                     "avfuse: report: skipped 1 line(s) that are no avfuse record (line 17)",
                     "avfuse: report: ignored the last line: it is cut short (the writer was probably stopped "
                     "mid-record)"]
    run = dump_dom(path.with_suffix(".html"))  # the default output: next to the records
    _assert_clean(run)
    dom = parse_dom(run.dom)
    page_notes = dom.find_all("ul", id="notes")[0].text()
    for note in ("skipped 3 records of types: foo", "skipped 1 line(s) that are no avfuse record",
                 "ignored the last line"):
        assert note in page_notes
    curves = dom.find_all(data_kind="curve")
    assert [(c.attrs["data-curve"], c.attrs["data-points"]) for c in curves] == \
        [("loudness_dbfs", "12"), ("luma", "12"), ("motion", "12")]  # three records of 4 bins, in time order
    assert "no signal curves" not in dom.text()
    assert dom.find_all(data_kind="sync")[0].attrs["data-points"] == "3"
    problems = [lane.attrs["data-label"] for lane in dom.find_all(class_="lane", data_group="problems")]
    assert problems == ["ingest_outage", "stream_discontinuity"]
    assert dom.find_all("table", class_="errors")[0].attrs["data-count"] == "1"
    assert "details at https://example.org/page" in dom.find_all("ol", class_="transcript")[0].text()


def test_curves_concatenate_and_downsample_keeping_peaks(tmp_path):
    lines = [line for line in _signals_fixture(tmp_path).read_text().splitlines() if '"signals"' in line]
    curve = build_curves([json.loads(line) for line in lines])[0]
    assert curve.name == "loudness_dbfs" and curve.step_s == 1.0
    assert curve.mean == [-30.0, None, -32.0, -33.0, -40.0, -41.0, -42.0, -43.0, -20.0, -21.0, -22.0, -23.0]
    hour = np.full(3600, -50.0)
    hour[1234] = -3.0  # one loud second in an hour
    signal = {"mean": hour.tolist(), "peak": hour.tolist()}
    long = build_curves([{"start_s": 0.0, "step_s": 1.0, "loudness_dbfs": signal}])[0]
    assert 1000 < len(long.peak) <= MAX_POINTS and long.step_s == 3.0
    assert max(long.peak) == -3.0 and max(long.mean) == pytest.approx((-3.0 - 50.0 - 50.0) / 3, abs=1e-3)


def _png(path: Path) -> Path:
    import av

    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 8, 8, "rgb24"
        frame = av.VideoFrame.from_ndarray(np.full((8, 8, 3), 200, dtype=np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


@pytest.mark.parametrize("kind", ["png", "text", "json_without_type", "other_schema", "missing", "missing_media"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, kind):
    path, args = tmp_path / f"{kind}.jsonl", []
    if kind == "missing_media":
        path, args = _signals_fixture(tmp_path), ["--media", str(tmp_path / "no-such-clip.mp4")]
    elif kind == "png":
        path = _png(tmp_path / "picture.png")
    elif kind == "text":
        path.write_text("just some notes\nabout a replay\n")
    elif kind == "json_without_type":
        path.write_text('{"stream_id": "s", "label": "scene_cut"}\n')
    elif kind == "other_schema":
        path.write_text('{"schema": "otherapp.event/1", "type": "event", "stream_id": "s"}\n')
    assert main([str(path), *args]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("avfuse: report: "), err
    expected = {"missing": "No such file or directory", "missing_media": "no such media file or folder"}
    assert expected.get(kind, "is not avfuse JSONL records") in err[0]
    assert not path.with_suffix(".html").exists()


def _lanes_match(section, records: list[dict]) -> None:
    drawn = Counter()
    for lane in section.find_all(class_="lane"):
        if lane.attrs.get("data-kind") != "transcript":
            drawn[lane.attrs["data-label"]] += int(lane.attrs["data-count"])
        marks = lane.find_all(class_="bin" if lane.attrs["data-binned"] == "1" else "ev")
        assert len(marks) == int(lane.attrs["data-drawn"])
    assert drawn == Counter(r["label"] for r in records if r["type"] == "event")


def test_one_hour_stream_is_bounded_and_loads_fast(tmp_path):
    path = synthetic_records(tmp_path / "hour.jsonl", streams=1, duration_s=3600.0)
    result = render_report(path)
    assert result.size_bytes < 2 * 2**20  # about 0.8 MiB from 3.2 MiB of records
    run = dump_dom(result.out_path)
    _assert_clean(run)
    section = parse_dom(run.dom).find_all("details", class_="stream")[0]
    _lanes_match(section, [json.loads(line) for line in path.read_text().splitlines()])
    onsets = section.find_all(class_="lane", data_label="loud_onset")[0]  # ~2900 onsets: counted in bins
    assert onsets.attrs["data-binned"] == "1" and int(onsets.attrs["data-drawn"]) <= N_BINS
    assert all(int(c.attrs["data-points"]) <= MAX_POINTS for c in section.find_all(data_kind="curve"))


def test_fifty_streams_draw_lazily(tmp_path):
    path = synthetic_records(tmp_path / "fifty.jsonl", streams=50, duration_s=120.0)
    result = render_report(path)
    assert result.size_bytes < 4 * 2**20  # about 2.2 MiB from 5.5 MiB of records
    run = dump_dom(result.out_path, "#s-49")  # a link to the last stream opens (and draws) it
    _assert_clean(run)
    dom = parse_dom(run.dom)
    sections = dom.find_all("details", class_="stream")
    assert len(sections) == 50 and len(dom.find_all("table", class_="overview")[0].find_all("tr")) == 51
    drawn = [i for i, s in enumerate(sections) if s.attrs.get("data-rendered") == "1"]
    assert drawn == [0, 1, 2, 49]
    assert not sections[10].find_all(class_="lane")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    _lanes_match(sections[49], [r for r in records if r["stream_id"] == "cam-49"])
