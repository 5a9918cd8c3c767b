"""When a camera's decoder may skip the frames no other frame refers to.

Detection often uses only some of a stream's frames: an `fps` cap takes every other one, an
overloaded box sheds most of them at the slot, a paused camera uses none. A decoder that skips
unreferenced frames (in an H.264 stream with B frames, about half of them) then saves a large share
of its work (-40 % of the CPU for faces-1080p30.mp4), and the frames it still decodes are
bit-identical, so detections do not change.

Measured, not guessed, because the share a stream can spare depends on how it was encoded:
- skipping starts after a window of full decoding in which detection used at most `START_SHARE` of
  the stream's frames;
- it stops when detection is starved: it took nearly every frame still decoded and a smaller share of
  the stream than before skipping; then it is not tried again for `RETRY_S`, twice as long after each
  try that starved it again (up to `RETRY_MAX_S`: a box short of CPU stays so for hours);
- it stops for one window to measure the demand afresh when detection takes every frame still decoded
  and a clearly larger share than before (detection resumed, the box no longer overloaded), and every
  `PROBE_S` anyway.

Shares of the stream's frames, not frames per second: a decoder that falls behind real time on a busy
box passes fewer frames per second whether it skips or not. A real-time stream's frames come at the
stream's pace whether they are decoded or not, so for one whose decoder is behind (its timestamps
advanced less than `BEHIND` of the wall clock in a window), the share is of the frames real time
brought: detection taking every frame a lagging decoder delivers is still using only part of the
stream, and skipping may let the decoder keep up (a live camera's backlog would otherwise only grow).
Whether it did is measured: a decoder that keeps up with real time only while skipping keeps skipping;
one still behind is judged like any other, because where the box is short of CPU for everything a decoder
at the lowest priority advances little or no faster for skipping (measured on an 8 x 30 fps overload: its
stream advanced 24 frames/s skipping and 25 not) and detection just gets half the frames: starvation,
skipping stops. After a whole `PROBE_S` of skipping without starvation the retry wait is back to `RETRY_S`.

The first window of an opening decides nothing: decoders starting up together, with the model's first
inferences, lag for a moment whatever they will do later.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_S = 2.0  # demand is measured over windows of this many seconds
START_SHARE = 0.55  # skip when detection used at most this share of the stream's frames
STARVED_SHARE = 0.9  # ... and stop when it takes at least this share of the frames still decoded
STARVED_SHARE_OF_BEFORE = 0.9  # ... while getting less than this fraction of the share it had before
DEMAND_ROSE = 1.5  # ... and measure the demand again when it takes this much more than before skipping
BEHIND = 0.9  # a real-time stream whose timestamps advanced less than this share of the wall clock lags
CLOCK_JUMP_S = 1.0  # a timestamp this far behind the furthest seen is the stream's clock starting over
PROBE_S = 60.0
RETRY_S = 60.0
RETRY_MAX_S = 960.0


@dataclass(frozen=True, slots=True)
class Change:
    skip: bool
    reason: str
    probe: bool = False  # a pause of skipping to measure the demand: its outcome follows a window later


class Thinning:
    """One camera opening's decision to skip unreferenced frames, fed from its capture thread."""

    def __init__(self) -> None:
        self.skipping = False
        self._window_start: float | None = None
        self._first_position: float | None = None  # the stream's clock (seconds) at the window's start
        self._furthest: float | None = None  # the furthest the stream's clock got in the window
        self._clock_jumped = False  # ... and it started over in the window (a file looping, a camera restarting)
        self._advanced = 0  # frames of the stream passed in this window (decoded or skipped)
        self._decoded = 0
        self._used_before = 0  # the running count of frames used, at the window's start
        self._full_share = 0.0  # the share of the stream detection used in the last window of full decoding
        self._full_lagged = False  # ... in which the decoder fell behind real time
        self._since = 0.0  # when skipping last started
        self._not_before = 0.0  # no new start before this (after detection was starved)
        self._retry_s = RETRY_S  # ... which was this long after it was starved last
        self._probing = False
        self._warming_up = True  # the opening's first window: measured, not acted on

    def observe(self, now: float, advanced: int, used: int, position: float | None = None) -> Change | None:
        """After each decoded frame: `advanced` frames of the stream it moved on, `used` the running count of
        frames detection has taken, `position` the frame's time on the stream's clock in seconds (real-time
        streams only: None for a file read as fast as detection goes). Returns the decision when it changes."""
        if self._window_start is None:
            self._window_start, self._used_before, self._first_position = now, used, position
        self._advanced += advanced
        self._decoded += 1
        if position is not None:
            if self._furthest is not None and position < self._furthest - CLOCK_JUMP_S:
                self._clock_jumped = True
            self._furthest = position if self._furthest is None else max(self._furthest, position)
        elapsed = now - self._window_start
        if elapsed < WINDOW_S:
            return None
        window_used = used - self._used_before
        lag = self._lag(elapsed)
        share, decoded_share = window_used / (self._advanced / lag), window_used / self._decoded
        self._window_start, self._used_before, self._advanced, self._decoded = now, used, 0, 0
        self._first_position = self._furthest = position
        self._clock_jumped = False
        if self._warming_up:
            self._warming_up = False
            return None
        if not self.skipping:
            self._full_share, self._full_lagged = share, lag < 1.0
            probed, self._probing = self._probing, False
            if share <= START_SHARE and now >= self._not_before:
                behind = f"the decoder kept up with {lag:.0%} of real time, " if lag < 1.0 else ""
                return self._switch(now, True, f"{behind}detection used {share:.0%} of the frames")
            return Change(False, f"detection used {share:.0%} of the frames") if probed else None
        # Keeping up with real time only by skipping is what skipping is for (a live stream's backlog would
        # otherwise grow for ever), even where detection gets a smaller share for it.
        kept_live = self._full_lagged and lag == 1.0
        if decoded_share >= STARVED_SHARE and share < STARVED_SHARE_OF_BEFORE * self._full_share and not kept_live:
            self._not_before = now + self._retry_s
            self._retry_s = min(2 * self._retry_s, RETRY_MAX_S)
            reason = f"detection got {share:.0%} of the frames instead of {self._full_share:.0%}"
            return self._switch(now, False, reason)
        if not self._full_lagged and decoded_share >= STARVED_SHARE and share > DEMAND_ROSE * self._full_share:
            # Detection takes all it gets, and more than before (resumed, or the box no longer overloaded):
            # it may want every frame now. Not after a lagging decoder: that skipping lets detection have
            # more is the point of it.
            self._probing = True
            return self._switch(now, False, "detection takes more frames than before", probe=True)
        if now - self._since >= PROBE_S:
            self._retry_s = RETRY_S  # skipping served detection for a whole period
            self._probing = True
            return self._switch(now, False, "measuring the demand again", probe=True)
        return None

    def _lag(self, elapsed: float) -> float:
        """The share of the wall clock the stream's clock advanced in the window, if it fell behind; else 1.

        Only a clock that moved forward by less than `BEHIND` counts: a jump back (a file looping) or ahead
        (a live camera's clock reset) says nothing about the decoder's pace.
        """
        if self._first_position is None or self._furthest is None or self._clock_jumped:
            return 1.0
        advanced = self._furthest - self._first_position
        return advanced / elapsed if 0 < advanced < BEHIND * elapsed else 1.0

    def _switch(self, now: float, skip: bool, reason: str, *, probe: bool = False) -> Change:
        self.skipping, self._since = skip, now
        return Change(skip, reason, probe)
