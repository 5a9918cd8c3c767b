"""Who goes first: cameras take turns at the model fairly, and decoders yield the cores to everything else."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged import inference
from edged.camera import Camera
from edged.config import CameraConfig
from edged.dispatch import Dispatcher
from edged.frame import Frame, FrameSlot
from edged.inference import Engine, Result, ResultCallback
from edged.models import ModelSpec, resolve
from edged.priority import CAMERA_NICENESS, LOWEST, at_lowest_priority
from edged.sources import open_source
from edged.worker import Worker

RETAIL = "models/face-detection-retail-0004/FP32/face-detection-retail-0004.xml"


def _retail(shared_dir: Path, requests: int) -> ModelSpec:
    spec = resolve(
        "retail", path=shared_dir / RETAIL, name=None, precision=None, device="CPU", confidence=None,
        nms_iou=None, resize=None, folder=shared_dir / "models",
    )  # fmt: skip
    return dataclasses.replace(spec, requests=requests)


def _one_request_engine(shared_dir: Path) -> Engine:
    return Engine(_retail(shared_dir, requests=1))


async def test_a_camera_whose_frame_was_not_ready_at_its_turn_goes_first_once_it_is(shared_dir: Path) -> None:
    engine = _one_request_engine(shared_dir)
    served: list[str] = []
    two_more = asyncio.Event()

    def on_result(result: Result) -> None:
        served.append(result.frame.camera)
        if len(served) % 2 == 0:
            two_more.set()

    dispatcher = Dispatcher(engine, on_result)
    slots = {camera: dispatcher.add_camera(camera) for camera in ("a", "b", "c")}
    image = np.zeros((300, 300, 3), np.uint8)

    def put(camera: str) -> None:
        slots[camera].put(Frame(camera, len(served), time.time(), image, engine.prepare(image)))

    task = asyncio.create_task(dispatcher.run())
    try:
        put("a")
        put("c")  # b has nothing at its turn
        await asyncio.wait_for(two_more.wait(), 10)
        two_more.clear()
        put("a")
        put("b")
        await asyncio.wait_for(two_more.wait(), 10)
    finally:
        task.cancel()
    assert served == ["a", "c", "b", "a"]


def _niceness(thread: int) -> int | None:
    """A thread's niceness; None once it has ended (the short-lived thread that opened the decoder)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, thread)
    except ProcessLookupError:
        return None


async def test_a_cameras_decoder_threads_run_at_the_lowest_priority_and_its_own_thread_nicer_and_waiting_its_turn(
    shared_dir: Path,
) -> None:
    config = CameraConfig(url=str(shared_dir / "media" / "faces-1080p30.mp4"))
    before = set(os.listdir("/proc/self/task"))
    worker = Worker("camera-door")
    source = await worker.call(open_source, "door", config)
    try:
        assert await worker.call(source.grab) == 1
        camera_thread = await worker.call(threading.get_native_id)
        decoders = {int(thread) for thread in set(os.listdir("/proc/self/task")) - before} - {camera_thread}
        assert decoders, "the decoder started no threads of its own"
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert _niceness(camera_thread) == min(LOWEST, own + CAMERA_NICENESS)
        assert {_niceness(thread) for thread in decoders} - {None} == {LOWEST}
        assert os.sched_getscheduler(camera_thread) == os.SCHED_BATCH  # woken per frame: waits its turn
    finally:
        await worker.call(source.release)
        worker.close()


def _waiting_their_turn() -> set[int]:
    return {int(thread) for thread in os.listdir("/proc/self/task") if _policy(int(thread)) == os.SCHED_BATCH}


def _policy(thread: int) -> int | None:
    try:
        return os.sched_getscheduler(thread)
    except ProcessLookupError:  # ended meanwhile
        return None


async def test_openvinos_callback_thread_waits_its_turn_when_woken_and_the_event_loop_does_not(
    shared_dir: Path,
) -> None:
    engine = _one_request_engine(shared_dir)
    before = _waiting_their_turn()
    image = np.zeros((300, 300, 3), np.uint8)
    for index in range(2):
        result: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        engine.submit(Frame("door", index, time.time(), image, engine.prepare(image)), result.set_result)
        await asyncio.wait_for(result, 10)
    assert len(_waiting_their_turn() - before) == 1  # the engine's callback thread, which decodes and hands on
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the event loop is served as soon as it is woken


async def test_openvinos_callback_thread_is_set_up_once_not_for_every_frame(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The binding gives a thread without a Python thread state a fresh one per callback unless edged keeps it:
    # the set-up (and a system call, and an allocation freed again) then ran for every frame.
    set_ups: list[int] = []
    monkeypatch.setattr(inference, "waits_its_turn", lambda: set_ups.append(threading.get_native_id()))
    engine = _one_request_engine(shared_dir)
    image = np.zeros((300, 300, 3), np.uint8)
    for index in range(6):
        result: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        engine.submit(Frame("door", index, time.time(), image, engine.prepare(image)), result.set_result)
        await asyncio.wait_for(result, 10)
    assert len(set_ups) == len(set(set_ups)) == 1


def test_the_lowest_priority_call_returns_its_result_and_raises_its_error_in_the_caller() -> None:
    assert at_lowest_priority(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())) == LOWEST
    with pytest.raises(ValueError, match="no decoder"):
        at_lowest_priority(_fail)


def _fail() -> None:
    raise ValueError("no decoder")


class _EngineHoldingBackTheFirstResult(Engine):
    """The real engine, but the first frame's result comes back `late_by` seconds late, or never (None): what
    OpenVINO's AsyncInferQueue does for a request that fails (it skips the Python callback), which cannot be
    provoked on demand."""

    late_by: float | None = None
    every: bool = False  # True: every frame's result is held back, not only the first one's
    first: int | None = None
    busy_while_held = False  # True: no request counts as free until the held result is back (a hung inference)
    holding = False

    def request_idle(self) -> bool:
        return not (self.busy_while_held and self.holding) and super().request_idle()

    def submit(self, frame: Frame, done: ResultCallback) -> None:
        if self.first is None:
            self.first = frame.index
        if frame.index != self.first and not self.every:
            super().submit(frame, done)
            return
        loop = asyncio.get_running_loop()
        self.holding = True

        def back(result: Result) -> None:
            self.holding = False
            done(result)

        def held_back(result: Result) -> None:
            if self.late_by is not None:
                loop.call_later(self.late_by, back, result)

        super().submit(frame, held_back)


async def _infer_each(slot: FrameSlot, engine: Engine, indexes: range) -> None:
    image = np.zeros((300, 300, 3), np.uint8)
    for index in indexes:
        slot.put(Frame("door", index, time.time(), image, engine.prepare(image)))
        await asyncio.wait_for(slot.emptied(), 10)  # each frame is inferred, none shed by the next


async def test_a_frame_whose_inference_never_returns_is_given_up_and_the_cameras_later_results_flow(
    shared_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _EngineHoldingBackTheFirstResult(_retail(shared_dir, requests=2))
    delivered: list[int] = []
    five = asyncio.Event()

    def on_result(result: Result) -> None:
        delivered.append(result.frame.index)
        if len(delivered) == 5:
            five.set()

    dispatcher = Dispatcher(engine, on_result, lost_after=1.0)
    slot = dispatcher.add_camera("door")
    task = asyncio.create_task(dispatcher.run())
    try:
        await _infer_each(slot, engine, range(6))
        await asyncio.wait_for(five.wait(), 10)
    finally:
        task.cancel()
    assert delivered == [1, 2, 3, 4, 5]  # in capture order, none held back behind the lost frame
    assert dispatcher.in_flight == 0
    assert "camera door: frame 0 never came back from model retail after 1 s" in caplog.text


class _EngineFailingEveryInferenceButTheFirst(Engine):
    """The real engine, but every inference after the first to finish fails inside OpenVINO, whose AsyncInferQueue
    then calls nothing back, until `failing` is turned off: a result held back for the next one to bring along
    would wait for good."""

    called_back = False
    failing = True

    def _completed(self, request: Any, userdata: Any) -> None:
        if not self.called_back or not self.failing:
            self.called_back = True
            super()._completed(request, userdata)


async def test_a_result_held_for_the_next_one_to_bring_is_delivered_when_every_later_inference_fails(
    shared_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Eight in flight: more than a device this size runs at once, so the first result is held for the next.
    engine = _EngineFailingEveryInferenceButTheFirst(_retail(shared_dir, requests=8))
    delivered: list[str] = []
    dispatcher = Dispatcher(engine, lambda result: delivered.append(result.frame.camera), lost_after=2.0)
    image = np.zeros((300, 300, 3), np.uint8)
    slots = {camera: dispatcher.add_camera(camera) for camera in "abcdefgh"}
    task = asyncio.create_task(dispatcher.run())
    try:
        for camera, slot in slots.items():  # one frame each, all in flight at once
            slot.put(Frame(camera, 0, time.time(), image, engine.prepare(image)))
        await asyncio.sleep(1.5)  # well before the others are given up on
        assert len(delivered) == 1
        await asyncio.wait_for(dispatcher.drain(), 10)
        assert (len(delivered), dispatcher.lost) == (1, 7)

        # The inferences given up on no longer count as queued: a lone frame's result is not held for them (until
        # the dispatcher's next look, a second after it went in).
        engine.failing = False
        slots["a"].put(Frame("a", 1, time.time(), image, engine.prepare(image)))
        await asyncio.wait_for(slots["a"].emptied(), 10)
        await asyncio.wait_for(dispatcher.drain(), 0.5)
    finally:
        task.cancel()
    assert len(delivered) == 2
    assert caplog.text.count("never came back from model retail") == 1  # the first give-up is logged


async def test_a_result_that_comes_back_after_its_frame_was_given_up_is_not_delivered_nor_counted_twice(
    shared_dir: Path,
) -> None:
    engine = _EngineHoldingBackTheFirstResult(_retail(shared_dir, requests=2))
    engine.late_by = 1.5
    delivered: list[int] = []
    dispatcher = Dispatcher(engine, lambda result: delivered.append(result.frame.index), lost_after=0.5)
    slot = dispatcher.add_camera("door")
    task = asyncio.create_task(dispatcher.run())
    try:
        await _infer_each(slot, engine, range(3))
        await asyncio.sleep(engine.late_by + 0.5)  # given up on at ~0.5-1 s, its result back at 1.5 s
        await _infer_each(slot, engine, range(3, 4))
        await asyncio.wait_for(dispatcher.drain(), 10)
    finally:
        task.cancel()
    assert delivered == [1, 2, 3]  # frame 0 was given up on: its late result is not handed over
    assert (dispatcher.lost, dispatcher.in_flight) == (1, 0)  # counted back once, at the give-up


async def test_a_frame_waiting_for_a_request_held_by_a_given_up_inference_goes_in_once_that_result_is_back(
    shared_dir: Path,
) -> None:
    engine = _EngineHoldingBackTheFirstResult(_retail(shared_dir, requests=2))
    engine.late_by, engine.busy_while_held = 1.5, True
    delivered: list[tuple[int, bool]] = []  # (frame index, whether the held result was back by then)
    dispatcher = Dispatcher(
        engine, lambda result: delivered.append((result.frame.index, not engine.holding)), lost_after=0.5
    )
    slot = dispatcher.add_camera("door")
    task = asyncio.create_task(dispatcher.run())
    try:
        await _infer_each(slot, engine, range(1))
        await asyncio.sleep(1.0)  # frame 0 given up on; its request still counts as busy
        # Only the late result frees a request: nothing else would wake the dispatcher for this frame.
        await _infer_each(slot, engine, range(1, 2))
        await asyncio.wait_for(dispatcher.drain(), 10)
    finally:
        task.cancel()
    assert delivered == [(1, True)]
    assert (dispatcher.lost, dispatcher.in_flight) == (1, 0)


class _EngineFreeingRequestsLate(_EngineHoldingBackTheFirstResult):
    """As OpenVINO's AsyncInferQueue: a request counts as free only once its callback has returned, which may be
    a moment after the event loop has taken the result the callback handed over."""

    freed_after = 0.05
    _returned_at = -1.0

    def request_idle(self) -> bool:
        return time.monotonic() - self._returned_at >= self.freed_after and super().request_idle()

    def submit(self, frame: Frame, done: ResultCallback) -> None:
        def returned(result: Result) -> None:
            self._returned_at = time.monotonic()
            done(result)

        super().submit(frame, returned)


async def test_after_a_lost_inference_a_frame_waiting_while_openvino_frees_the_request_still_goes_in(
    shared_dir: Path,
) -> None:
    """Once an inference was given up on, the dispatcher asks OpenVINO whether a request is free. A file camera
    read as fast as detection goes puts its next frame before that request is freed, and nothing else follows
    to wake the dispatcher: it must look again by itself."""
    engine = _EngineFreeingRequestsLate(_retail(shared_dir, requests=1))
    delivered: list[int] = []
    dispatcher = Dispatcher(engine, lambda result: delivered.append(result.frame.index), lost_after=0.5)
    slot = dispatcher.add_camera("door")
    task = asyncio.create_task(dispatcher.run())
    try:
        await _infer_each(slot, engine, range(1))
        await asyncio.sleep(1.0)  # frame 0 given up on
        await _infer_each(slot, engine, range(1, 5))
        await asyncio.wait_for(dispatcher.drain(), 10)
    finally:
        task.cancel()
    assert delivered == [1, 2, 3, 4]
    assert dispatcher.lost == 1


async def _decoded_while_every_request_is_busy(
    engine: _EngineHoldingBackTheFirstResult, lost_after: float
) -> list[str]:
    """Frame 0 holds the only request; frame 1 is decoded on a camera's thread meanwhile: what happened, in order."""
    happened: list[str] = []
    dispatcher = Dispatcher(
        engine, lambda result: happened.append(f"result {result.frame.index}"), lost_after=lost_after
    )
    slot = dispatcher.add_camera("door")
    worker = Worker("camera-door")
    image = np.zeros((300, 300, 3), np.uint8)

    def decode(index: int) -> Frame:
        return Frame("door", index, time.time(), image, engine.prepare(image))

    task = asyncio.create_task(dispatcher.run())
    try:
        await _infer_each(slot, engine, range(1))
        frame = await asyncio.wait_for(worker.call(decode, 1, deliver=slot.deliver), 10)
        happened.append("frame 1 decoded")
        await _infer_each(slot, engine, range(1, 2))
        await asyncio.wait_for(dispatcher.drain(), 10)
        assert frame.index == 1
    finally:
        task.cancel()
        worker.close()
    return happened


async def test_a_frame_decoded_while_every_request_is_busy_arrives_with_the_result_that_frees_one(
    shared_dir: Path,
) -> None:
    engine = _EngineHoldingBackTheFirstResult(_retail(shared_dir, requests=1))
    engine.late_by = 1.0
    # The decoded frame did not wake the loop: it came with the result (no request was free before it).
    assert await _decoded_while_every_request_is_busy(engine, lost_after=15.0) == [
        "result 0",
        "frame 1 decoded",
        "result 1",
    ]


async def test_a_frame_decoded_while_the_only_request_is_lost_arrives_when_that_inference_is_given_up(
    shared_dir: Path,
) -> None:
    engine = _EngineHoldingBackTheFirstResult(_retail(shared_dir, requests=1))  # frame 0's result never comes
    assert await _decoded_while_every_request_is_busy(engine, lost_after=1.0) == ["frame 1 decoded", "result 1"]


async def test_a_file_camera_whose_frame_waits_for_a_slow_model_is_not_declared_stalled(
    shared_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _EngineHoldingBackTheFirstResult(_retail(shared_dir, requests=1))
    engine.late_by, engine.every = 2.0, True  # every result comes back after twice the camera's stall_timeout
    results: list[int] = []
    dispatcher = Dispatcher(engine, lambda result: results.append(result.frame.index))
    config = CameraConfig(url=str(shared_dir / "media" / "classroom.mp4"), realtime=False, stall_timeout=1.0)
    camera = Camera("door", config, dispatcher.add_camera("door"), engine.preparer(), lambda name, online: None)
    tasks = [asyncio.create_task(dispatcher.run()), asyncio.create_task(camera.run())]
    try:
        await asyncio.sleep(5.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert results[:2] == [0, 1]  # the frame decoded meanwhile went in once the model gave the first result back
    assert camera.reconnects == 0
    assert "stalled" not in caplog.text


IDLE_S = 2.0  # before the first frame: an idle engine is not a silent one
IDLE_S = 2.0  # before the first frame: an idle engine is not a silent one


async def _stalled_after(
    engine: Engine, seconds: float, *, lost_after: float = 15.0, keep_feeding: bool = False
) -> tuple[float, Dispatcher]:
    """Idle for IDLE_S, then a frame whose result the engine holds back: how long the engine has been silent
    `seconds` later, as the health check sees it. `keep_feeding`: a camera that goes on sending frames, each
    taken as soon as a request is free; the look is then taken right after the latest went in."""
    dispatcher = Dispatcher(engine, lambda result: None, lost_after=lost_after)
    slot = dispatcher.add_camera("door")
    task = asyncio.create_task(dispatcher.run())
    image = np.zeros((300, 300, 3), np.uint8)
    try:
        await asyncio.sleep(IDLE_S)
        assert dispatcher.stalled_for(time.monotonic()) == 0.0
        first, index = time.monotonic(), 0
        while index == 0 or (keep_feeding and time.monotonic() - first < seconds):
            slot.put(Frame("door", index, time.time(), image, image))
            await asyncio.wait_for(slot.emptied(), 10)
            index += 1
        if not keep_feeding:
            await asyncio.sleep(seconds)
        return dispatcher.stalled_for(time.monotonic()), dispatcher
    finally:
        task.cancel()


async def test_an_engine_counts_as_silent_from_when_it_was_given_work_not_from_its_last_result(
    shared_dir: Path,
) -> None:
    engine = _EngineHoldingBackTheFirstResult(_retail(shared_dir, requests=2))  # the first result never comes
    stalled, _ = await _stalled_after(engine, 1.0)
    assert 1.0 <= stalled < 1.0 + IDLE_S  # not counted from when the dispatcher started


async def test_an_engine_whose_requests_are_all_held_by_given_up_inferences_stays_silent(shared_dir: Path) -> None:
    engine = _EngineHoldingBackTheFirstResult(_retail(shared_dir, requests=2))
    engine.busy_while_held = True  # a hung inference: its request never frees
    stalled, dispatcher = await _stalled_after(engine, 1.0, lost_after=0.3)
    assert (dispatcher.lost, dispatcher.in_flight) == (1, 0)
    assert stalled >= 1.0  # given up on, yet the engine still holds it: the health check must see that


async def test_an_engine_that_fails_every_inference_adds_up_its_silence_across_the_give_ups(shared_dir: Path) -> None:
    engine = _EngineHoldingBackTheFirstResult(_retail(shared_dir, requests=1))
    engine.every = True  # each request fails: no callback, yet the request is free again
    stalled, dispatcher = await _stalled_after(engine, 2.0, lost_after=0.3, keep_feeding=True)
    assert dispatcher.lost >= 3
    assert stalled >= 2.0  # not just the moment since the latest frame went in


async def test_a_failed_inference_given_up_on_leaves_an_engine_that_is_not_silent(shared_dir: Path) -> None:
    engine = _EngineHoldingBackTheFirstResult(_retail(shared_dir, requests=2))  # its request is free again
    stalled, dispatcher = await _stalled_after(engine, 1.0, lost_after=0.3)
    assert (dispatcher.lost, stalled) == (1, 0.0)
