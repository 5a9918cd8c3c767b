"""Feeding one engine from its cameras' slots: fair turns, never more frames than free requests.

Back-pressure is explicit: a frame is taken from a slot only when a request is free, so while the
model is busy each camera's slot keeps just its newest frame and stale ones are shed and counted.
Two frames of one camera may be in flight at once and finish in either order; results are released
per camera in capture order, so subscribers see frame indexes only ever increase.

A frame that a file camera at full speed decodes while every request is busy could not be submitted
before the next result comes back anyway: it waits here without waking the event loop, and reaches its slot in the
wake-up that result causes. Waking the loop costs the two threads more CPU than the Python it then runs
(docs/performance-notes.md, sections n and o); so, with the camera thread's own wake-up, the loop wakes
about once per frame instead of twice while the model is the bottleneck.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from edged.frame import Frame, FrameSlot
from edged.inference import Engine, Result, ResultCallback

log = logging.getLogger("edged.dispatch")

# An inference takes milliseconds; one not back after this long never will be: OpenVINO's AsyncInferQueue
# does not call back for a request that failed, and the results of that camera's later frames would wait
# behind it for good (holding their frames' memory). Well inside health's 30 s without any result.
LOST_AFTER_S = 15.0
LOST_CHECK_S = 1.0
FREED_RECHECK_S = 0.02  # after a give-up: how soon to ask OpenVINO again whether a request is free


class Dispatcher:
    def __init__(self, engine: Engine, on_result: ResultCallback, *, lost_after: float = LOST_AFTER_S) -> None:
        self._engine = engine
        self._on_result = on_result
        self._lost_after = lost_after
        self._slots: dict[str, FrameSlot] = {}  # in service order: the camera served longest ago first
        # Per camera: frames in flight with their submission times (time.monotonic()), oldest first.
        self._in_order: dict[str, deque[tuple[Frame, float]]] = {}
        self._finished: dict[int, Result] = {}  # by id(frame): results waiting for an older frame
        self.lost = 0
        self._heard_from = time.monotonic()  # the engine's last sign of life while it had work (see stalled_for)
        self._silence = 0.0  # how long it had been silent when its last inferences were given up on
        self._wake = asyncio.Event()  # a fresh frame arrived or a request came back
        # Decoded frames on their way to the loop that did not wake it (see _arrive), in arrival order.
        self._arrivals: deque[Callable[[], None]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = asyncio.Event()  # the opposite of _idle: some frame is in flight
        self._recheck: asyncio.TimerHandle | None = None  # see _request_free
        self.in_flight = 0

    def add_camera(self, camera: str) -> FrameSlot:
        slot = FrameSlot(camera, self._wake.set, self._arrive)
        self._slots[camera] = slot
        return slot

    def remove_camera(self, camera: str) -> None:
        self._slots.pop(camera, None)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._give_up_on_lost_inferences(), name=f"lost-inferences-{self._engine.name}")
            await self._feed()

    def _arrive(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[], None]) -> None:
        """On a camera's thread, with a frame just decoded: wake the loop only if a request may be free.

        Otherwise a result is on its way, and `_feed` delivers the frame once that result has freed a
        request. The order matters: the frame is queued before the requests are counted, and the loop
        counts a request free before it looks at the queue (in `_returned`, then `_feed`), so one of the
        two always sees the other."""
        self._arrivals.append(deliver)
        if self.in_flight < self._engine.requests:
            loop.call_soon_threadsafe(self._deliver_arrivals)

    def _deliver_arrivals(self) -> None:
        arrivals = self._arrivals
        while arrivals:
            try:
                arrivals.popleft()()
            except Exception:  # as the loop treats a failing callback: said, and the others still delivered
                log.exception("model %s: a decoded frame could not be handed to its camera", self._engine.name)

    async def _feed(self) -> None:
        while True:
            self._wake.clear()
            if self._arrivals:
                self._deliver_arrivals()
            if self._request_free() and (frame := self._next_frame()) is not None:
                self._submit(frame)
                continue
            await self._wake.wait()

    def _request_free(self) -> bool:
        if self.in_flight >= self._engine.requests:
            return False
        # A request given up on may still be running after all: submitting would then block the loop until
        # one frees, so ask the queue itself.
        if not self.lost or self._engine.request_idle():
            return True
        # Busy: that request still runs, or OpenVINO has not yet marked free the request whose result just came
        # (it does once the callback has returned). No result may follow to wake the feed: look again soon.
        if self._recheck is None:
            self._recheck = asyncio.get_running_loop().call_later(FREED_RECHECK_S, self._look_again)
        return False

    def _look_again(self) -> None:
        self._recheck = None
        self._wake.set()

    async def drain(self) -> None:
        """Wait until every frame handed to the engine has come back."""
        await self._idle.wait()

    def _next_frame(self) -> Frame | None:
        """The fresh frame of the camera served longest ago: none can starve, and a camera whose frame was
        not ready when its turn came goes first once it is (a cursor going round would make it wait a
        whole round, and cameras whose decoders lag would fall behind the others)."""
        for slot in self._slots.values():
            if (frame := slot.take()) is not None:
                break
        else:
            return None
        self._slots[slot.camera] = self._slots.pop(slot.camera)  # now served last (after the loop: it reorders)
        return frame

    def stalled_for(self, now: float) -> float:
        """Seconds the engine has held work without giving anything back (0 when it holds none): frames in
        flight, or requests still taken by inferences given up on while no request is free. Time with nothing
        to do does not count; the silence of inferences given up on does, so an engine that fails every
        request (no callback, but the request free again) adds up its silence across the give-ups."""
        holding = self.in_flight > 0 or (self.lost > 0 and not self._engine.request_idle())
        return now - self._heard_from if holding else 0.0

    def _submit(self, frame: Frame) -> None:
        if self.in_flight == 0:
            self._heard_from = time.monotonic() - self._silence  # the time with nothing to do is not silence
        self.in_flight += 1
        self._track_idle()
        in_order = self._in_order.setdefault(frame.camera, deque())
        in_order.append((frame, time.monotonic()))
        try:
            self._engine.submit(frame, self._completed)
        except Exception:
            self.in_flight -= 1
            in_order.pop()
            log.exception(
                "camera %s: frame %d could not be submitted to model %s", frame.camera, frame.index, self._engine.name
            )
            self._track_idle()

    def _completed(self, result: Result) -> None:
        self._heard_from, self._silence = time.monotonic(), 0.0
        if not any(frame is result.frame for frame, _ in self._in_order[result.frame.camera]):
            # Given up on already (and counted back then), yet its request is free now. A camera has at most
            # `requests` frames in flight: the look is as cheap as a set's.
            self._wake.set()
            return
        self._returned()
        self._finished[id(result.frame)] = result
        self._release(result.frame.camera)

    def _returned(self) -> None:
        self.in_flight -= 1
        self._track_idle()
        self._wake.set()

    def _track_idle(self) -> None:
        """`_idle` and `_busy` follow `in_flight`: one to wait for the last result, the other for the first frame."""
        if self.in_flight:
            self._idle.clear()
            self._busy.set()
        else:
            self._idle.set()
            self._busy.clear()

    def _release(self, camera: str) -> None:
        """Hand over the camera's results that no older frame in flight holds back, in capture order."""
        in_order = self._in_order[camera]
        while in_order and (ready := self._finished.pop(id(in_order[0][0]), None)) is not None:
            in_order.popleft()
            self._on_result(ready)

    async def _give_up_on_lost_inferences(self) -> None:
        while True:
            await self._busy.wait()  # nothing in flight, nothing to give up on: no tick while edged is idle
            await asyncio.sleep(min(LOST_CHECK_S, self._lost_after / 2))
            self._engine.hand_over()  # a result held back for the next one to bring, whose inference then failed
            deadline = time.monotonic() - self._lost_after
            for camera, in_order in self._in_order.items():
                while in_order and in_order[0][1] < deadline and id(in_order[0][0]) not in self._finished:
                    frame, _ = in_order.popleft()
                    self._give_up(frame)
                    self._release(camera)

    def _give_up(self, frame: Frame) -> None:
        self.lost += 1
        self._engine.forget(frame)
        self._returned()
        if self.in_flight == 0:
            self._silence = time.monotonic() - self._heard_from
        if self.lost == 1 or self.lost % 100 == 0:
            log.error(
                "camera %s: frame %d never came back from model %s after %.0f s (an inference failed inside "
                "OpenVINO); dropped, %d so far",
                frame.camera,
                frame.index,
                self._engine.name,
                self._lost_after,
                self.lost,
            )
