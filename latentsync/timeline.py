"""Where the speech goes in the video (the dubbing options), as frame counts fixed before a run starts.

    output:  [ lead: passed through ][ speech: synced ][ tail: passed through (when_video_is_longer keep) ]
    source:  [ 0 .. lead            ][ the span: lead .. the video's end, drawn from by the synced frames     ]

A passed-through output frame ``o`` is source frame ``o`` (before and after the speech alike). Synced frame ``i`` is
made from frame ``source_index(i)`` of the span, as a run on the video cut at ``lead`` would make it: the span
played once, then (the speech outlasting it) ping-pong, loop or hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from .frames import pingpong_index

VIDEO_LONGER = ("cut", "keep")
AUDIO_LONGER = ("pingpong", "loop", "hold")


@dataclass(frozen=True)
class Timeline:
    lead: int  # output frames before the speech
    speech: int  # synced output frames: the speech's length at the video's frame rate
    tail: int  # output frames after the speech
    span: int  # source frames from ``lead`` to the video's end
    revisit: str = "pingpong"  # when_audio_is_longer

    @property
    def total(self) -> int:
        return self.lead + self.speech + self.tail

    @property
    def revisits(self) -> bool:
        """The speech outlasts the span: some span frames are used more than once."""
        return self.speech > self.span

    @property
    def frames_to_track(self) -> int:
        """The span frames a run aligns, from the first: all of them when it revisits frames, else one a synced
        frame."""
        return min(self.span, self.speech)

    @property
    def placed(self) -> bool:
        """The output is not just the synced frames (a lead or a tail): the sound is the speech placed in it."""
        return bool(self.lead or self.tail)

    def source_index(self, i: int) -> int:
        """The span frame synced frame ``i`` is made from."""
        if i < self.span:
            return i
        if self.revisit == "loop":
            return i % self.span
        if self.revisit == "hold":
            return self.span - 1
        return pingpong_index(i, self.span)  # forward, backward, forward... (the published rule)

    def audio_delay(self, fps: Fraction) -> float | None:
        """The output's sound: the speech after this many seconds of silence (the lead's frames: what the frames
        are synced to) and padded with silence to the video's end; None when there is no lead and no tail (the
        speech as it is: the published output)."""
        return float(self.lead / fps) if self.placed else None


def lead_frames(audio_start: float, fps: Fraction, source_frames: int) -> int:
    """Frames of the video before ``audio_start`` seconds (the nearest frame); one sentence when it is not inside the
    video."""
    lead = round(audio_start * fps)
    if lead >= source_frames:
        raise ValueError(f"audio_start {audio_start:g} s falls on frame {lead + 1} of a {source_frames}-frame video "
                         f"(it lasts {float(source_frames / fps):.2f} s): the latest start is "
                         f"{math.floor((source_frames - 1) / fps * 100) / 100:.2f} s, its last frame")
    return lead


def plan_timeline(options, source_frames: int, fps: Fraction, speech: int) -> Timeline:
    """The timeline of a run with ``options`` (its audio_start, when_video_is_longer, when_audio_is_longer) on a
    video of ``source_frames`` at ``fps`` and ``speech`` frames of speech."""
    lead = lead_frames(options.audio_start, fps, source_frames)
    span = source_frames - lead
    tail = max(0, span - speech) if options.when_video_is_longer == "keep" else 0
    return Timeline(lead, speech, tail, span, options.when_audio_is_longer)
