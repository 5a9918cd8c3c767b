"""Feeding one engine from its cameras' slots: fair turns, never more frames than free requests.

Back-pressure is explicit: a frame is taken from a slot only when a request is free, so while the
model is busy each camera's slot keeps just its newest frame and stale ones are shed and counted.
Two frames of one camera may be in flight at once and finish in either order; results are released
per camera in capture order, so subscribers see frame indexes only ever increase.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from edged.frame import Frame, FrameSlot
from edged.inference import Engine, Result, ResultCallback

log = logging.getLogger("edged.dispatch")


class Dispatcher:
    def __init__(self, engine: Engine, on_result: ResultCallback) -> None:
        self._engine = engine
        self._on_result = on_result
        self._slots: dict[str, FrameSlot] = {}  # in service order: the camera served longest ago first
        self._in_order: dict[str, deque[Frame]] = {}  # per camera: frames in flight, oldest first
        self._finished: dict[int, Result] = {}  # by id(frame): results waiting for an older frame
        self._wake = asyncio.Event()  # a fresh frame arrived or a request came back
        self._idle = asyncio.Event()
        self._idle.set()
        self.in_flight = 0

    def add_camera(self, camera: str) -> FrameSlot:
        slot = FrameSlot(camera, self._wake.set)
        self._slots[camera] = slot
        return slot

    def remove_camera(self, camera: str) -> None:
        self._slots.pop(camera, None)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            if self.in_flight < self._engine.requests and (frame := self._next_frame()) is not None:
                self._submit(frame)
                continue
            await self._wake.wait()

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

    def _submit(self, frame: Frame) -> None:
        self.in_flight += 1
        self._idle.clear()
        in_order = self._in_order.setdefault(frame.camera, deque())
        in_order.append(frame)
        try:
            self._engine.submit(frame, self._completed)
        except Exception:
            self.in_flight -= 1
            in_order.pop()
            log.exception(
                "camera %s: frame %d could not be submitted to model %s", frame.camera, frame.index, self._engine.name
            )
            if self.in_flight == 0:
                self._idle.set()

    def _completed(self, result: Result) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()
        self._wake.set()
        self._finished[id(result.frame)] = result
        in_order = self._in_order[result.frame.camera]
        while in_order and (ready := self._finished.pop(id(in_order[0]), None)) is not None:
            in_order.popleft()
            self._on_result(ready)
