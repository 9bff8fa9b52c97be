"""Face counts in the pipeline (``faces.enabled``): sampled frames, face_present events, window records.

Real PyAV decoding and, end to end, real Ray with the MTCNN weights of the facenet-pytorch wheel,
on the signal profile (the faces are not switched by it) to keep the run cheap. chaplin.mp4
shows one face at 4-5 s and two at 7 s (tests/test_faces.py checks them against facenet-pytorch);
nasa_13013.mp4's narrator is never on screen; the generated sample clip has no face.
"""

from __future__ import annotations

import asyncio

import jsonschema
import numpy as np
import pytest

from pipeline.app.sample import ClipSpec, write_clip
from pipeline.compute.runtime import Pipeline
from pipeline.core.config import load_config
from pipeline.core.media import FaceCounts
from pipeline.ingest.decode import MediaDecoder
from pipeline.output.records import schema_for
from pipeline.stream.face_events import FaceEvents
from tests.conftest import SHARED_MEDIA, _replayer

CHAPLIN, NASA = SHARED_MEDIA / "chaplin.mp4", SHARED_MEDIA / "nasa_13013.mp4"
FACES_ON = ["profile=signal", "faces.enabled=true", "records.windows=true", "records.stdout=false"]


def counts(*frames: tuple[float, int], probability: float = 0.99) -> FaceCounts:
    t_s, count = zip(*frames)
    return FaceCounts(np.array(t_s, np.float64), np.array(count, np.int32),
                      np.array([probability if c else 0.0 for c in count], np.float32))


def face_events(**faces) -> FaceEvents:
    return FaceEvents("cam", load_config(None, [f"faces.{k}={v}" for k, v in faces.items()], environ={}).faces)


# -- face_present spans ------------------------------------------------------------


def test_a_face_on_screen_for_three_frames_is_one_event_over_their_steps():
    events = face_events()
    assert events.update(counts((0.0, 0), (1.0, 1), (2.0, 2), (3.0, 1))) == []  # still open
    (event,) = events.update(counts((4.0, 0)))
    assert (event.label, event.detector, event.start_s, event.end_s) == ("face_present", "faces", 0.5, 3.5)
    assert event.attributes == {"max_faces": 2, "mean_faces": 1.333, "frames": 3, "peak_probability": 0.99}
    assert event.confidence == 0.99


def test_a_face_shorter_than_min_duration_is_no_event():
    events = face_events(min_duration_s=2.0)
    found = events.update(counts((0.0, 0), (1.0, 1), (2.0, 0), (3.0, 1), (4.0, 1), (5.0, 0)))
    assert [(e.start_s, e.end_s) for e in found] == [(2.5, 4.5)]  # the 1 s face at 1 s is dropped


def test_a_pause_in_the_frames_ends_the_span_where_the_frames_stopped():
    events = face_events()
    (event,) = events.update(counts((1.0, 1), (2.0, 1), (6.0, 1)))  # frames 3-5 s never came
    assert (event.start_s, event.end_s) == (0.5, 2.5)


def test_the_end_of_the_stream_closes_an_open_span_at_its_last_frame():
    events = face_events()
    events.update(counts((0.0, 1), (1.0, 1), (2.0, 1)))
    (event,) = events.finish(end_s=9.0)
    assert (event.start_s, event.end_s, event.attributes["frames"]) == (0.0, 2.5, 3)
    assert events.finish(end_s=9.0) == []


# -- decoding ----------------------------------------------------------------------


def decoded(path, sets):
    decoder = MediaDecoder("s", str(path), load_config(None, sets, environ={}))
    decoder.open()
    try:
        return list(decoder.chunks())
    finally:
        decoder.close()


def test_the_decoder_samples_face_frames_by_pts_at_the_configured_width_only_when_enabled():
    chunks = decoded(CHAPLIN, ["faces.enabled=true", "faces.fps=2", "faces.width=320", "visual_tags.enabled=false"])
    frames = [c.face_frames for c in chunks if c.face_frames is not None]
    pts = np.concatenate([f.pts_s for f in frames])
    assert {f.frames_rgb_u8.shape[1:] for f in frames} == {(180, 320, 3)}  # 640x360 at 320 wide
    assert len(pts) == 20 and np.allclose(pts, np.arange(20) * 0.5, atol=0.04)  # 9.64 s at 2 fps
    assert all(c.face_frames is None for c in decoded(CHAPLIN, ["visual_tags.enabled=false"]))


# -- end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces_pipeline(ray_session):
    pipe = Pipeline(load_config(None, FACES_ON, environ={}))
    asyncio.run(pipe.warm_up())
    yield pipe
    pipe.shutdown()


@pytest.fixture(scope="module")
def run(faces_pipeline, tmp_path_factory):
    """chaplin, nasa_13013 and a generated clip without faces, replayed together."""
    folder = tmp_path_factory.mktemp("faces")
    return _replayer(faces_pipeline, folder)(CHAPLIN, NASA, write_clip(folder / "no_face.mp4", ClipSpec()))


def test_face_present_where_chaplins_faces_are_and_nowhere_else(run):
    assert [r.status for r in run.results] == ["ok"] * 3
    faces = run.events(label="face_present")
    assert {e["stream_id"] for e in faces} == {"chaplin.mp4"}, "a face where none is visible"
    spans = [(e["start_s"], e["end_s"], e["attributes"]["max_faces"]) for e in faces]
    assert spans == [(3.5, 5.5, 1), (6.5, 8.5, 2)]
    assert all(e["detector"] == "faces" and e["confidence"] >= 0.9 for e in faces)


def test_window_records_carry_the_most_faces_of_their_frames(run):
    windows = {w["start_s"]: w["faces"] for w in run.of("window", "chaplin.mp4")}
    assert (windows[0.0], windows[3.0], windows[4.0], windows[6.0], windows[7.0], windows[9.0]) == (0, 1, 1, 2, 2, 0)
    for stream_id in ("nasa_13013.mp4", "no_face.mp4"):
        with_frames = [w for w in run.of("window", stream_id) if "faces" not in w["missing"]]
        assert with_frames and all(w["faces"] == 0 for w in with_frames), stream_id


def test_face_records_validate_against_their_schemas(run):
    for record in run.records:
        jsonschema.validate(record, schema_for(record["type"]))
    assert {w["schema"] for w in run.of("window")} == {"avfuse.window/3"}


def test_faces_off_runs_no_face_operator_and_windows_say_null(pipeline, replay, tmp_path):
    assert "faces" not in pipeline.operators
    result = replay(write_clip(tmp_path / "off.mp4", ClipSpec(duration_s=4.0)))
    windows = result.of("window")
    assert result.results[0].status == "ok" and windows
    assert all(w["faces"] is None and "faces" not in w["missing"] for w in windows)
    assert not result.events(label="face_present")
