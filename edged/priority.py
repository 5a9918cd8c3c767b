"""Who gets the cores first when there are not enough: inference, then a frame's conversion, decoding last.

Linux niceness is per thread and inherited by the threads a thread starts. edged's own threads
(event loop, OpenVINO's) keep the process's niceness; a camera's thread runs `CAMERA_NICENESS` nicer,
so resizing never starves inference; the decoder threads PyAV's FFmpeg starts when a file or RTSP
decoder is opened run at the lowest priority: they get what the rest leaves. (A live stream decodes with
slice threads only, edged/sources.py: one whose frames are a single slice each decodes in its camera
thread, at +5, as a live stream must keep up anyway.) A frame's conversion and resizing then run as
soon as it is decoded, and a box that cannot decode everything decodes less instead of delaying the
frames already decoded (docs/performance-notes.md, sections g and h, have the figures).

The lowest is the lowest on the whole host: other programs' work goes first too, and a live camera
whose decoder falls behind real time may try skipping frames to keep up (`edged.thinning`). OpenCV's
readers (USB, MJPEG) decode at their camera thread's priority.

Threads woken once or more per frame only to hand work on (a camera's, OpenVINO's callback thread) also wait
their turn when woken (SCHED_BATCH: the same share of the cores, but no preempting the thread that runs).
Otherwise each wake-up takes a core from an inference mid-layer, and a camera thread woken by the event loop
would preempt the loop while it still holds the GIL, only to block on it: 11 context switches per frame
instead of 7, and a sixth more of the event loop's CPU (docs/performance-notes.md, section q).

Raising a thread's niceness needs no privilege; lowering it again does, which a service user lacks:
so decoders are opened on a short-lived thread that is made nicer, never by a thread made nicer and
back.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("edged.priority")

T = TypeVar("T")

CAMERA_NICENESS = 5  # camera threads run this much nicer than the rest of edged
LOWEST = 19  # the nicest a Linux thread can be


def nicer_by(steps: int) -> None:
    """Lower the calling thread's priority by `steps` (at most to the lowest); silent where not permitted."""
    _renice(lambda current: min(LOWEST, current + steps))


def waits_its_turn() -> None:
    """Let the calling thread, when woken, wait for the running thread's time slice instead of preempting it
    (SCHED_BATCH, inherited by the threads it starts); silent where not permitted."""
    if not hasattr(os, "SCHED_BATCH"):  # Linux only; elsewhere threads keep the default policy
        return
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as error:
        log.debug("thread scheduling unchanged: %s", error)


def _lowest() -> None:
    _renice(lambda current: LOWEST)


def _renice(niceness: Callable[[int], int]) -> None:
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, niceness(os.getpriority(os.PRIO_PROCESS, thread)))
    except OSError as error:  # not permitted in some sandboxes: run at the priority given
        log.debug("thread priority unchanged: %s", error)


def at_lowest_priority(function: Callable[[], T]) -> T:
    """Run `function` on a thread of its own at the lowest priority and return its result (or raise its error).

    For opening decoders: the threads a decoder starts when it is opened inherit that priority, while
    the caller keeps its own.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        _lowest()
        try:
            outcome.append(function())
        except BaseException as error:  # handed to the caller, raised there
            failure.append(error)

    thread = threading.Thread(target=run, name=f"{threading.current_thread().name}-open", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
