"""The stream clock: one continuous, monotonic time per stream, across reconnects and PTS jumps.

A source's timestamps are not a clock to trust: after a reconnect they start again near 0, a TS
wrap or a camera reboot sends them backwards, a splice sends them forwards. The decoder maps every
decoded frame's PTS (in seconds) through one ``StreamClock`` that audio and video share:

    stream time = pts_s + shift_s,   shift_s = offset_s - base_s

``base_s`` is where the connection's timestamps start (a file's start time; after a reconnect, the
first PTS decoded), ``offset_s`` where that connection starts on the stream clock. Inside one
connection, a modality whose PTS lands more than ``JUMP_BACK_S`` before, or more than
``JUMP_FORWARD_S`` after, the time its next frame was due has jumped: the clock re-bases it so that
time goes on where it was due. The first modality to jump decides the new shift; the other takes
the same one when it jumps by about as much, so audio and video stay aligned. A forward step under
``JUMP_FORWARD_S`` is media that is missing (a lost packet, a dropout): it stays a gap; so does
audio far ahead unless the video jumped as far (audio missing for seconds is commoner than a jump).
"""

from __future__ import annotations

import time

from pipeline.core.media import SourceChange

# Backwards by more than this is never media order (B-frames come out of the decoder in
# presentation order; AAC frames are 21 ms).
JUMP_BACK_S = 0.5
# Forwards by more than this is a jump of the timestamps, not a gap in the media: a source that
# lost this much media in both modalities would be a disconnect, which a live source notices itself.
JUMP_FORWARD_S = 5.0
# The second modality's jump is the same jump when it is within this of the first one's.
SAME_JUMP_S = 1.0


class StreamClock:
    """Maps (modality, pts_s) to stream time; ``jumps`` collects a SourceChange per re-base.

    ``base_s`` None: the first PTS mapped is the base (a reconnect's new timestamps).
    """

    def __init__(self, base_s: float | None = 0.0, offset_s: float = 0.0):
        self._offset_s = offset_s
        self._shared_shift_s = None if base_s is None else offset_s - base_s
        self._shift_s: dict[str, float] = {}
        self._due_pts_s: dict[str, float] = {}
        self._last_jump: tuple[float, float] | None = None  # (jump in PTS, the shift it set)
        self.jumps: list[SourceChange] = []

    def to_stream_s(self, modality: str, pts_s: float, duration_s: float) -> float:
        """Stream time of a frame of ``modality`` at ``pts_s`` lasting ``duration_s``; frames of a
        modality come in presentation order."""
        if self._shared_shift_s is None:
            self._shared_shift_s = self._offset_s - pts_s
        shift_s = self._shift_s.setdefault(modality, self._shared_shift_s)
        due_s = self._due_pts_s.get(modality)
        if due_s is not None and self._jumped(modality, pts_s - due_s):
            shift_s = self._rebase(modality, pts_s - due_s, due_s + shift_s)
        self._due_pts_s[modality] = pts_s + duration_s
        return pts_s + shift_s

    def peek_s(self, modality: str, pts_s: float) -> float:
        """Stream time ``pts_s`` would map to now, without noting anything (a packet's, before decoding)."""
        shift_s = self._shift_s.get(modality, self._shared_shift_s)
        return pts_s + (shift_s if shift_s is not None else self._offset_s - pts_s)

    def _jumped(self, modality: str, step_s: float) -> bool:
        if step_s < -JUMP_BACK_S:
            return True
        if step_s <= JUMP_FORWARD_S:
            return False
        # Audio far ahead is more often audio that is missing (a dropout) than a jump: it is one
        # only when the video jumped as far.
        return modality != "audio" or self._matches_last_jump(modality, step_s)

    def _matches_last_jump(self, modality: str, jump_s: float) -> bool:
        return (self._last_jump is not None and abs(jump_s - self._last_jump[0]) <= SAME_JUMP_S
                and self._shift_s[modality] != self._last_jump[1])

    def _rebase(self, modality: str, jump_s: float, due_stream_s: float) -> float:
        if self._matches_last_jump(modality, jump_s):
            shift_s = self._last_jump[1]  # the other modality's jump: the same new shift
        else:
            shift_s = self._shift_s[modality] - jump_s
            self._last_jump = (jump_s, shift_s)
            self.jumps.append(SourceChange(
                "pts_jump", "pts_jump", due_stream_s, resume_s=due_stream_s, jump_s=jump_s, wall_s=time.time(),
                detail=f"{modality} timestamps jumped {'back' if jump_s < 0 else 'forward'} {abs(jump_s):.2f}s"))
        self._shift_s[modality] = shift_s
        return shift_s

    def state(self) -> dict:
        """What a resumed decoder needs to give the same stream times (a checkpoint keeps it):
        the shared shift and each modality's, in seconds."""
        return {"shared_shift_s": self._shared_shift_s, "shift_s": dict(self._shift_s)}

    @classmethod
    def restored(cls, state: dict) -> "StreamClock":
        """A clock that maps PTS as the one whose ``state()`` this is did (no jump is pending:
        the first frame of each modality is due wherever it lands)."""
        clock = cls(0.0)
        clock._shared_shift_s = state["shared_shift_s"]
        clock._shift_s = {modality: float(shift) for modality, shift in state["shift_s"].items()}
        return clock

    def take_jumps(self) -> list[SourceChange]:
        jumps, self.jumps = self.jumps, []
        return jumps
