"""What one stream's taggers say, made into events and fusion tokens.

Per-stream state of the pretrained taggers, kept with the rest of the stream's state in its
``StreamSession``: a ``TagEventDetector`` per tagger (``pipeline.stream.tag_events``) and, when both
run, the ``AVEventDetector`` (``pipeline.stream.av_events``); and the image tags of each scene
(``pipeline.stream.scene_tags``). The taggers' rows also go into the
stream's aligner as two more modalities, "sights" (EfficientNet-Lite0 frames) and "sounds"
(YAMNet patches): their embeddings are the tokens the fusion attends over, and their classes
what av_events read. A modality the media lacks has no detector and no rows, so its tags are
absent rather than empty guesses.
"""

from __future__ import annotations

from pipeline.core.config import Config
from pipeline.core.media import ClassScores, MediaChunk, StreamInfo
from pipeline.ingest.audio_patches import PATCH_SAMPLES, SAMPLE_RATE_HZ, sound_patches_wanted
from pipeline.output.records import Event
from pipeline.stream.alignment import AlignedWindow, TimedRows, WindowAligner
from pipeline.stream.av_events import AVEventDetector, load_concepts
from pipeline.stream.scene_tags import SceneTags
from pipeline.stream.tag_events import TagEventDetector, TagEventRules
from pipeline.stream.tag_vocabularies import sight_vocabulary, sound_vocabulary

SOUND_STEP_S = 0.48  # patches every 0.48 s: each stands for the 0.48 s around its centre
# Every later patch is centred at least this far before the audio watermark (see audio_patches).
_SOUND_WATERMARK_LAG_S = PATCH_SAMPLES / SAMPLE_RATE_HZ / 2 + 1e-3

__all__ = ["Understanding", "check_rules", "fuses_tagger_tokens", "tagger_modalities"]


def tagger_modalities(cfg: Config) -> tuple[str, ...]:
    """The aligner modalities the taggers add: "sights" and / or "sounds"."""
    return (("sights",) if cfg.visual_tags.enabled else ()) + (("sounds",) if sound_patches_wanted(cfg) else ())


def fuses_tagger_tokens(cfg: Config) -> bool:
    """Whether the fusion reads the taggers' embeddings (both run) rather than the encoders' tokens."""
    return tagger_modalities(cfg) == ("sights", "sounds")


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
        modalities = tagger_modalities(cfg)
        self.sights_on = "sights" in modalities and info.video is not None
        self.sounds_on = "sounds" in modalities and info.audio is not None
        self.sounds = TagEventDetector(stream_id, sound_vocabulary(), sound_rules(cfg)) if self.sounds_on else None
        self.sights = TagEventDetector(stream_id, sight_vocabulary(), sight_rules(cfg)) if self.sights_on else None
        self.scenes: SceneTags | None = None
        if self.sights is not None and cfg.visual_tags.per_scene and cfg.detectors.scene_cut.enabled:
            # Half a second over the cut detector's lookahead: a cut is decided by then.
            self.scenes = SceneTags(stream_id, sight_vocabulary(), self.sights.eligible, 1.0 / cfg.visual_tags.fps,
                                    cfg.visual_tags.tag_min, cfg.detectors.scene_cut.min_scene_s + 0.5,
                                    cfg.visual_tags.per_scene)
        self.av: AVEventDetector | None = None
        if cfg.av_events_on and self.sounds_on and self.sights_on:
            concepts, version = load_concepts(cfg.av_events.concepts, sound_vocabulary(), sight_vocabulary())
            self.av = AVEventDetector(stream_id, cfg.av_events, cfg.align.hop_s, concepts, version,
                                      sound_vocabulary(), sight_vocabulary())

    def top_tags(self, n: int) -> dict[str, list[dict]]:
        """The summary's audio_tags and visual_tags: the n classes with the most seconds."""
        return {"audio_tags": self.sounds.totals.top(n) if self.sounds is not None else [],
                "visual_tags": self.sights.totals.top(n) if self.sights is not None else []}

    def on_tags(self, aligner: WindowAligner, sights: ClassScores | None, sounds: ClassScores | None) -> list[Event]:
        """One chunk's tagger outputs: tag events now ended; the rows go to the stream's aligner."""
        events = []
        for modality, detector, scores in (("sights", self.sights, sights), ("sounds", self.sounds, sounds)):
            if detector is None or scores is None or len(scores) == 0:
                continue
            events += detector.update(scores)
            if detector is self.sights and self.scenes is not None:
                self.scenes.add(scores)
            if not aligner.states[modality].done:  # a modality that gave up: what is flushed later is late
                aligner.add(modality, TimedRows(scores.t_s, {
                    "tokens": scores.tokens_f32, "class_index": scores.class_index, "score": scores.score}))
        return events

    def advance(self, aligner: WindowAligner, chunk: MediaChunk) -> None:
        """The taggers' watermarks follow their media's; an absent or ended modality finishes them."""
        for modality, on, watermark_s, done in (
                ("sights", self.sights_on, chunk.video_watermark_s, chunk.video_done),
                ("sounds", self.sounds_on, chunk.audio_watermark_s - _SOUND_WATERMARK_LAG_S, chunk.audio_done)):
            if modality not in aligner.states:
                continue
            aligner.advance(modality, watermark_s)
            if done or not on:
                aligner.finish(modality)
        if self.scenes is not None:
            self.scenes.advance(chunk.video_watermark_s)

    def on_scene_cut(self, t_s: float) -> list[Event]:
        """A scene cut: the scene before it, with its tags (none without scene tags)."""
        return self.scenes.cut(t_s) if self.scenes is not None else []

    def window_text(self, window: AlignedWindow, per_modality: int = 5) -> str | None:
        """What the window's tags say, as text a vector database can index: "heard: Music,
        Piano; seen: crutch" (per tagger its best classes at or above tag_min, allow/deny applied)."""
        parts = []
        for modality, verb, detector in (("sounds", "heard", self.sounds), ("sights", "seen", self.sights)):
            rows = window.rows.get(modality)
            if detector is None or rows is None or len(rows) == 0:
                continue
            best: dict[int, float] = {}
            for indices, scores in zip(rows.columns["class_index"].tolist(), rows.columns["score"].tolist()):
                for i, score in zip(indices, scores):
                    if detector.eligible[i] and round(score, 3) >= detector.rules.tag_min:
                        best[i] = max(best.get(i, 0.0), score)
            ranked = sorted(best, key=lambda i: (-best[i], i))[:per_modality]
            if ranked:
                parts.append(f"{verb}: " + ", ".join(detector.vocabulary.names[i] for i in ranked))
        return "; ".join(parts) or None

    def on_windows(self, windows: list[AlignedWindow]) -> list[Event]:
        return self.av.on_windows(windows) if self.av is not None else []

    # -- checkpoints: its state is all in running totals and open spans, carried whole --

    def _parts(self) -> dict:
        return {name: part for name, part in (("sound_tags", self.sounds), ("visual_tags", self.sights),
                                              ("scene_tags", self.scenes), ("av_concepts", self.av))
                if part is not None}

    def state(self) -> dict[str, dict]:
        return {name: part.state() for name, part in self._parts().items()}

    def adopt(self, state: dict[str, dict]) -> None:
        """A resumed run, at the checkpoint's processed time: the first run's state replaces what
        its replay of the warm-up built (spans it opened late, totals it counted twice)."""
        for name, part in self._parts().items():
            if name in state:
                part.adopt(state[name])

    def open_event_ids(self) -> list[str]:
        return [i for part in self._parts().values() for i in part.open_event_ids()]

    def finish(self, video_end_s: float | None, audio_end_s: float | None) -> list[Event]:
        events = []
        if self.sounds is not None:
            events += self.sounds.finish(audio_end_s)
        if self.sights is not None:
            events += self.sights.finish(video_end_s)
        if self.scenes is not None:
            events += self.scenes.finish(video_end_s)
        if self.av is not None:
            events += self.av.close()
        return events
