"""Specifications of the MTCNN FaceDetector (CPU, no Ray, offline).

The reference is facenet-pytorch's own ``MTCNN`` (keep_all=True, on the CPU) with the same
packaged weights, on real frames of ../shared/media decoded with PyAV at 640 px wide, as the
pipeline samples them. Chaplin's two men face the camera from 4 s on; nasa_13013's narrator
is never on screen (a technician in a hooded clean-room suit, from behind): MTCNN's best
guesses there stay below 0.9.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
import types
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from operators.checkpoint import CheckpointError
from operators.faces import PACKAGED_FILES, FaceDetector, load_face_detector, packaged_weights_paths

SHARED_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def reference_mtcnn():
    """facenet-pytorch's MTCNN. Its package __init__ imports the recognition model's downloader
    (tqdm, requests), which a --no-deps install lacks: then load the package without it."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        for name in [n for n in sys.modules if n == "facenet_pytorch" or n.startswith("facenet_pytorch.")]:
            del sys.modules[name]
        package = types.ModuleType("facenet_pytorch")
        package.__path__ = [str(importlib.metadata.distribution("facenet-pytorch").locate_file("facenet_pytorch"))]
        sys.modules["facenet_pytorch"] = package
        from facenet_pytorch.models.mtcnn import MTCNN
    return MTCNN(keep_all=True, device="cpu")


def sampled_frames(clip: str, fps: float = 1.0, width: int = 640) -> tuple[np.ndarray, list[float]]:
    """uint8 [N, H, W, 3] frames of ``clip`` at ``fps`` by PTS, scaled to ``width`` (even height), and their times."""
    frames, times, last_slot = [], [], -1
    with av.open(str(SHARED_MEDIA / clip)) as container:
        for frame in container.decode(video=0):
            slot = int(np.floor(frame.time * fps + 1e-6))
            if slot > last_slot:
                last_slot = slot
                height = round(width * frame.height / frame.width / 2) * 2
                frames.append(frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA"))
                times.append(frame.time)
    return np.stack(frames), times


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    detector, _ = load_face_detector()
    return detector


@pytest.fixture(scope="module")
def clips() -> dict[str, tuple[np.ndarray, list[float]]]:
    return {clip: sampled_frames(clip) for clip in ("chaplin.mp4", "nasa_13013.mp4")}


def reference_detections(frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes [K, 4], probs [K]) per frame from facenet-pytorch, most probable first."""
    boxes, probs = reference_mtcnn().detect(frames)
    found = []
    for b, p in zip(boxes, probs):
        if b is None:
            found.append((np.zeros((0, 4), np.float32), np.zeros(0, np.float32)))
        else:
            order = np.argsort(-np.asarray(p, np.float32))
            found.append((np.asarray(b, np.float32)[order], np.asarray(p, np.float32)[order]))
    return found


@pytest.mark.parametrize("clip", ["chaplin.mp4", "nasa_13013.mp4"])
def test_same_faces_as_facenet_pytorch_on_real_frames(detector, clips, clip):
    frames, times = clips[clip]
    ours = detector(torch.from_numpy(frames))
    reference = reference_detections(frames)
    assert len(ours) == len(frames)
    for t_s, mine, (boxes, probs) in zip(times, ours, reference):
        assert len(mine.probs) == len(probs), (clip, t_s)
        np.testing.assert_allclose(mine.boxes_px.numpy(), boxes, atol=2.0, err_msg=f"{clip} at {t_s:.2f}s")
        np.testing.assert_allclose(mine.probs.numpy(), probs, atol=1e-3, err_msg=f"{clip} at {t_s:.2f}s")
        assert mine.count == int((probs >= detector.min_probability).sum())
    assert sum(len(probs) for _, probs in reference) > 0, f"{clip}: the comparison saw no box at all"


def test_chaplin_shows_faces_from_four_seconds_and_two_at_seven(detector, clips):
    frames, times = clips["chaplin.mp4"]
    counts = {round(t_s): found.count for t_s, found in zip(times, detector(torch.from_numpy(frames)))}
    assert counts[0] == 0 and counts[4] == 1 and counts[5] == 1 and counts[7] == 2, counts


def test_the_narrator_of_nasa_13013_is_never_seen(detector, clips):
    frames, _ = clips["nasa_13013.mp4"]
    found = detector(torch.from_numpy(frames))
    assert all(f.count == 0 for f in found)
    assert max(f.max_probability for f in found) < detector.min_probability


def test_a_flat_frame_has_no_face(detector):
    flat = torch.full((2, 360, 640, 3), 128, dtype=torch.uint8)
    assert [(f.count, len(f.probs), tuple(f.boxes_px.shape)) for f in detector(flat)] == [(0, 0, (0, 4))] * 2


def test_each_frame_is_detected_alone_whatever_the_batch(detector, clips):
    frames, _ = clips["chaplin.mp4"]
    batched = detector(torch.from_numpy(frames))
    for i in (4, 7):
        (alone,) = detector(torch.from_numpy(frames[i:i + 1]))
        assert alone.count == batched[i].count
        np.testing.assert_allclose(alone.boxes_px.numpy(), batched[i].boxes_px.numpy(), atol=1e-2)


def test_contract_edges(detector):
    assert detector(torch.zeros(0, 360, 640, 3, dtype=torch.uint8)) == []
    (tiny,) = detector(torch.zeros(1, 16, 16, 3, dtype=torch.uint8))  # shorter than a 20 px face
    assert tiny.count == 0 and tiny.boxes_px.shape == (0, 4)
    with pytest.raises(ValueError, match="uint8 frames"):
        detector(torch.zeros(1, 360, 640, 3))
    with pytest.raises(ValueError, match="uint8 frames"):
        detector(torch.zeros(1, 3, 360, 640, dtype=torch.uint8))


def test_the_weights_are_the_pinned_files_of_the_wheel():
    _, source = load_face_detector()
    paths = packaged_weights_paths()
    assert set(paths) == {"pnet", "rnet", "onet"} and source.path == paths["pnet"].parent
    assert "facenet-pytorch 2.6.0" in str(source) and len(source.sha256) == 64


@pytest.fixture
def copied_package(tmp_path, monkeypatch):
    """A writable copy of the installed wheel's weight files, found through a fake distribution."""
    real = packaged_weights_paths()
    for name, (file, _) in PACKAGED_FILES.items():
        target = tmp_path / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(real[name], target)

    class Copy:
        version = "2.6.0"

        @staticmethod
        def locate_file(file):
            return tmp_path / file

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Copy)
    return tmp_path


def test_a_corrupt_weight_file_is_one_line_naming_it_and_its_hash(copied_package):
    onet = copied_package / PACKAGED_FILES["onet"][0]
    onet.write_bytes(onet.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as info:
        load_face_detector()
    message = str(info.value)
    assert "\n" not in message and str(onet) in message and PACKAGED_FILES["onet"][1] in message


def test_a_missing_weight_file_is_one_line_naming_it(copied_package):
    rnet = copied_package / PACKAGED_FILES["rnet"][0]
    rnet.unlink()
    with pytest.raises(CheckpointError) as info:
        load_face_detector()
    assert "\n" not in str(info.value) and str(rnet) in str(info.value)
    assert PACKAGED_FILES["rnet"][1] in str(info.value)


def test_without_the_package_the_error_says_how_to_install_it():
    with pytest.raises(CheckpointError, match=r"pip install --no-deps facenet-pytorch==2\.6\.0"):
        load_face_detector(distribution="no-such-distribution-avfuse")
