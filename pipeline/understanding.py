"""What one stream's taggers say, made into events: sound classes, visual tags, av_events.

Per-stream state of the pretrained taggers, kept with the rest of the stream's state in its
``StreamSession``: a ``TagEventDetector`` per tagger (``pipeline.tag_events``) and, when both
run, the ``AVEventDetector`` (``pipeline.av_events``). A modality the media lacks has no
detector, so its tags are absent rather than empty guesses.
"""

from __future__ import annotations

from pipeline.audio_patches import PATCH_SAMPLES, SAMPLE_RATE_HZ
from pipeline.av_events import AVEventDetector, load_concepts
from pipeline.config import Config
from pipeline.decode import StreamInfo, sound_patches_wanted
from pipeline.media import ClassScores, MediaChunk
from pipeline.records import Event
from pipeline.tag_events import TagEventDetector, TagEventRules
from pipeline.tag_vocabularies import sight_vocabulary, sound_vocabulary

SOUND_STEP_S = 0.48  # patches every 0.48 s: each stands for the 0.48 s around its centre
# Every later patch is centred at least this far before the audio watermark (see audio_patches).
_SOUND_WATERMARK_LAG_S = PATCH_SAMPLES / SAMPLE_RATE_HZ / 2 + 1e-3


def sound_rules(cfg: Config) -> TagEventRules:
    c = cfg.sound_tags
    return TagEventRules("sound_tags", "audio", c.enter, c.exit, c.min_duration_s, SOUND_STEP_S,
                         tuple(c.allow), tuple(c.deny), c.keep_ancestors, c.tag_min)


def sight_rules(cfg: Config) -> TagEventRules:
    c = cfg.visual_tags
    return TagEventRules("visual_tags", "video", c.enter, c.exit, c.min_duration_s, 1.0 / c.fps,
                         tuple(c.allow), tuple(c.deny), tag_min=c.tag_min)


def check_rules(cfg: Config) -> None:
    """Build the class filters and the concept table once: ValueError (one line) if any names
    a class the taggers do not have, so a typo stops the start, not every stream."""
    audio_and_video = StreamInfo(None, {"codec": "check"}, {"codec": "check"})
    Understanding("config-check", cfg, audio_and_video)


class Understanding:
    def __init__(self, stream_id: str, cfg: Config, info: StreamInfo):
        sounds_on = sound_patches_wanted(cfg) and info.audio is not None
        sights_on = cfg.visual_tags.enabled and info.video is not None
        self.sounds = TagEventDetector(stream_id, sound_vocabulary(), sound_rules(cfg)) if sounds_on else None
        self.sights = TagEventDetector(stream_id, sight_vocabulary(), sight_rules(cfg)) if sights_on else None
        self.av: AVEventDetector | None = None
        if cfg.av_events_on and sounds_on and sights_on:
            concepts, version = load_concepts(cfg.av_events.concepts, sound_vocabulary(), sight_vocabulary())
            self.av = AVEventDetector(stream_id, cfg.av_events, cfg.align, concepts, version,
                                      sound_vocabulary(), sight_vocabulary())

    def top_tags(self, n: int) -> dict[str, list[dict]]:
        """The summary's audio_tags and visual_tags: the n classes with the most seconds."""
        return {"audio_tags": self.sounds.totals.top(n) if self.sounds is not None else [],
                "visual_tags": self.sights.totals.top(n) if self.sights is not None else []}

    def on_chunk(self, chunk: MediaChunk, sights: ClassScores | None, sounds: ClassScores | None) -> list[Event]:
        events = []
        if self.sounds is not None and sounds is not None:
            events += self.sounds.update(sounds)
        if self.sights is not None and sights is not None:
            events += self.sights.update(sights)
        if self.av is not None:
            self.av.add("sounds", sounds, chunk.audio_watermark_s - _SOUND_WATERMARK_LAG_S, chunk.audio_done)
            self.av.add("sights", sights, chunk.video_watermark_s, chunk.video_done)
            events += self.av.pop_events()
        return events

    def finish(self, video_end_s: float | None, audio_end_s: float | None) -> list[Event]:
        events = []
        if self.sounds is not None:
            events += self.sounds.finish(audio_end_s)
        if self.sights is not None:
            events += self.sights.finish(video_end_s)
        if self.av is not None:
            events += self.av.close()
        return events
