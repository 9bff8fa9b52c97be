"""decode.skip_nonref and decode.fast: what the video decoder leaves out, and what the samplers keep.

chaplin.mp4 is 25 fps H.264 with B-frames: 241 frames, 61 of them referenced by no other frame
(benchmarks.bench_decode_modes measures the same on 60 s 720p clips).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from pipeline.core.config import load_config
from pipeline.ingest.decode import MediaDecoder
from pipeline.ingest.nonref_skip import NonrefSkipper, skip_nonref_wanted
from tests.conftest import SHARED_MEDIA

CHAPLIN = SHARED_MEDIA / "chaplin.mp4"


def decoded(sets):
    decoder = MediaDecoder("s", str(CHAPLIN), load_config(None, sets, environ={}))
    decoder.open()
    try:
        chunks = list(decoder.chunks())
    finally:
        decoder.close()
    videos = [c.video for c in chunks if c.video is not None]
    tags = np.concatenate([c.tag_frames.pts_s for c in chunks if c.tag_frames is not None])
    return (decoder, sum(c.frames_decoded for c in chunks), np.concatenate([v.pts_s for v in videos]),
            np.concatenate([v.frames_rgb_u8 for v in videos]), tags)


def test_auto_leaves_out_the_non_reference_frames_no_sampler_keeps_and_the_samples_stay_the_same():
    _, every, full_pts, full_frames, full_tags = decoded(["decode.skip_nonref=false"])
    decoder, fewer, pts, frames, tags = decoded([])  # auto: 4 fps (and the tagger's 1 fps) under half of 25
    assert decoder.nonref_skipper is not None and decoder.nonref_skipper.active
    assert every == 241 and 180 <= fewer < 200  # 61 left out, less the few the samplers keep
    assert np.array_equal(pts, full_pts) and np.array_equal(tags, full_tags)
    assert np.array_equal(frames, full_frames)  # the references decode alike: the samples are bit-exact


def test_auto_decodes_every_frame_when_a_sampler_keeps_half_the_source_rate_or_more():
    decoder, count, _, _, _ = decoded(["video.fps=12.5"])
    assert decoder.nonref_skipper is None and count == 241
    assert not skip_nonref_wanted(load_config(None, ["faces.enabled=true", "faces.fps=15"], environ={}), 25.0)
    assert not skip_nonref_wanted(load_config(None, [], environ={}), None)  # unknown rate: never
    assert not skip_nonref_wanted(load_config(None, ["decode.skip_nonref=true"], environ={}), None)


def test_skipping_stops_once_a_sampler_would_keep_a_later_frame_than_the_full_decode():
    context = SimpleNamespace(skip_frame="DEFAULT")
    skipper = NonrefSkipper(context, [4.0], 25.0)
    skipper.before(8 * 0.04)  # 0.32 s: the 4 fps sampler keeps 0.28 s
    assert context.skip_frame == "NONREF"
    skipper.before(7 * 0.04)
    assert context.skip_frame == "DEFAULT"
    for t_s in (0.0, 0.08, 0.16, 0.24):  # B-frames left out between them, no tick
        skipper.decoded(t_s)
    assert skipper.active
    skipper.decoded(0.32)  # 0.28 s never came (a variable rate): the sample at 0.25 would move
    assert not skipper.active and context.skip_frame == "DEFAULT"
    skipper.before(8 * 0.04)
    assert context.skip_frame == "DEFAULT"


def test_forced_on_at_a_high_rate_still_keeps_the_full_decodes_samples():
    _, _, full_pts, _, _ = decoded(["decode.skip_nonref=false", "video.fps=13"])
    decoder, count, pts, _, _ = decoded(["decode.skip_nonref=true", "video.fps=13"])
    assert decoder.nonref_skipper.active and count < 241 and np.array_equal(pts, full_pts)


def test_fast_keeps_the_same_samples_without_deblocking():
    _, _, full_pts, full, _ = decoded(["decode.skip_nonref=false"])
    _, count, pts, fast, _ = decoded(["decode.skip_nonref=false", "decode.fast=true"])
    assert count == 241 and np.array_equal(pts, full_pts)
    mse = np.mean((fast.astype(np.float64) - full) ** 2)
    assert 0 < mse and 10 * np.log10(255**2 / mse) > 30  # changed (the option was taken), a little
