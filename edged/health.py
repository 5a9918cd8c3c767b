"""Is the pipeline doing its job? The answer feeds systemd's watchdog and the STATUS= line.

Liveness is more than "the event loop runs": a camera that claims to be online but has sent no
frame for far longer than its own stall detection allows, or an inference engine that took
frames and gives nothing back, means something is wedged that edged cannot fix itself. Then the
watchdog is not fed and systemd restarts edged. Cameras that are offline (reconnecting with
backoff) or finished are idle by design, not unhealthy.
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINE_TIMEOUT_S = 30.0  # an inference takes milliseconds; half a minute without any result is a hang
CAMERA_GRACE_S = 10.0  # beyond a camera's stall_timeout: its own stall detection should have acted by then


@dataclass(frozen=True, slots=True)
class CameraState:
    name: str
    online: bool
    finished: bool
    since_frame: float | None  # seconds since its last frame (None: none yet)
    stall_timeout: float
    frame_interval: float = 0.0  # seconds between the frames its `fps` cap lets through (0: no cap)
    failed: bool = False  # stopped on an error it cannot retry (a corrupt file): it waits for the operator


@dataclass(frozen=True, slots=True)
class Snapshot:
    cameras: tuple[CameraState, ...]
    inference_stalled: float  # seconds the most silent engine has held work without giving anything back
    stalled_model: str  # that engine's model
    mqtt_connected: bool
    outbox: int
    dropped: int
    fps: float  # detections published per second, recently
    dead_tasks: tuple[str, ...] = ()  # tasks of the pipeline that ended although they should not


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    problem: str  # empty when ok
    summary: str  # one line for STATUS=


def assess(snapshot: Snapshot) -> Health:
    return Health(not (problem := _problem(snapshot)), problem, summarise(snapshot))


def _problem(s: Snapshot) -> str:
    if s.dead_tasks:
        return f"task {', '.join(s.dead_tasks)} ended"
    if s.inference_stalled > ENGINE_TIMEOUT_S:
        return f"model {s.stalled_model}: inference returned nothing for {s.inference_stalled:.0f} s"
    for camera in s.cameras:
        limit = camera.stall_timeout + CAMERA_GRACE_S + camera.frame_interval
        if camera.online and camera.since_frame is not None and camera.since_frame > limit:
            return f"camera {camera.name} is online but sent no frame for {camera.since_frame:.0f} s"
    return ""


def summarise(s: Snapshot) -> str:
    """E.g. `3/4 cameras online, 41.5 detections/s, MQTT connected, outbox 0`."""
    running = [c for c in s.cameras if not c.finished]
    online = [c for c in running if c.online]
    parts = [f"{len(online)}/{len(running)} cameras online"]
    offline = [c.name for c in running if not c.online]
    if offline:
        parts[0] += f" (offline: {_names(offline)})"
    if failed := [c.name for c in s.cameras if c.failed]:
        parts[0] += f", stopped on an error: {_names(failed)}"
    parts.append(f"{s.fps:.1f} detections/s")
    parts.append("MQTT connected" if s.mqtt_connected else "MQTT disconnected")
    parts.append(f"outbox {s.outbox}")
    if s.dropped:
        parts.append(f"{s.dropped} dropped")
    return ", ".join(parts)


def _names(cameras: list[str]) -> str:
    return ", ".join(cameras[:5]) + ("..." if len(cameras) > 5 else "")
