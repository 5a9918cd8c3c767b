"""The supervisor: owns every task of a run and wires camera -> frame -> inference -> decode -> publish.

Shutdown order matters and is spelt out in `_shut_down`: stop taking frames, let the frames already
in the engine come back and be published, flush the outbox, say `offline`, disconnect.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Coroutine
from typing import Any

from edged.camera import Camera
from edged.config import Config
from edged.dispatch import Dispatcher
from edged.inference import Engine, Result
from edged.message import detection_payload
from edged.nvr import Nvr
from edged.publish import Publisher

log = logging.getLogger("edged")

DRAIN_TIMEOUT_S = 2.0  # in-flight inferences take tens of milliseconds; this is a generous bound
FLUSH_TIMEOUT_S = 2.0  # together they keep a SIGTERM stop within systemd's patience


class Supervisor:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._publisher = Publisher(config.mqtt)
        self._nvr = Nvr(config, self._publisher)  # events, snapshots, stats, metrics, discovery, control
        self._stop = asyncio.Event()
        self._seq: dict[str, int] = {}
        self._camera_online: dict[str, bool] = {}
        self._errors_logged: set[str] = set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
        engines = await self._compile_models()
        dispatchers = {name: Dispatcher(engine, self._on_result) for name, engine in engines.items()}
        cameras = [
            Camera(
                name,
                camera,
                dispatchers[self._config.model_of(name)].add_camera(name),
                engines[self._config.model_of(name)].prepare,
                self._on_camera_status,
            )
            for name, camera in self._config.cameras.items()
        ]
        for name, engine in engines.items():
            self._nvr.add_model(name, dispatchers[name], engine.requests)
        for camera in cameras:
            self._nvr.add_camera(camera.name, camera, camera.slot, self._config.model_of(camera.name))
        self._nvr.start()
        async with asyncio.TaskGroup() as tasks:
            self._nvr.create_tasks(tasks)
            mqtt_task = tasks.create_task(self._publisher.run(), name="mqtt")
            dispatch_tasks = [
                tasks.create_task(dispatcher.run(), name=f"dispatch-{name}") for name, dispatcher in dispatchers.items()
            ]
            camera_tasks = [
                tasks.create_task(self._guard(camera.run(), f"camera {camera.name}"), name=camera.name)
                for camera in cameras
            ]
            tasks.create_task(self._stop_when_all_done(camera_tasks), name="cameras-done")
            log.info("edged running: %d cameras on %d models (%s)", len(cameras), len(engines), ", ".join(engines))
            await self._stop.wait()
            await self._shut_down(camera_tasks, list(dispatchers.values()), dispatch_tasks, mqtt_task)

    async def _compile_models(self) -> dict[str, Engine]:
        """Compile every model some camera uses, side by side and off the event loop."""
        specs = self._config.model_specs()
        used = list(dict.fromkeys(self._config.model_of(camera) for camera in self._config.cameras))
        for unused in specs.keys() - set(used):
            log.info("model %s is used by no camera: not compiled", unused)
        engines = await asyncio.gather(*(asyncio.to_thread(Engine, specs[name]) for name in used))
        return dict(zip(used, engines, strict=True))

    async def _shut_down(
        self,
        camera_tasks: list[asyncio.Task[None]],
        dispatchers: list[Dispatcher],
        dispatch_tasks: list[asyncio.Task[None]],
        mqtt_task: asyncio.Task[None],
    ) -> None:
        for task in camera_tasks:
            task.cancel()
        await asyncio.gather(*camera_tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(asyncio.gather(*(d.drain() for d in dispatchers)), DRAIN_TIMEOUT_S)
        except TimeoutError:
            lost = sum(d.in_flight for d in dispatchers)
            log.warning("%d inferences still running at shutdown; their results are lost", lost)
        for task in dispatch_tasks:
            task.cancel()
        await self._nvr.shut_down()
        await self._publisher.close(FLUSH_TIMEOUT_S)
        mqtt_task.cancel()
        log.info("edged stopped")

    def _on_signal(self, signum: int) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self._stop.set()

    async def _stop_when_all_done(self, camera_tasks: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*camera_tasks, return_exceptions=True)
        if not self._stop.is_set():
            log.info("every camera has finished: stopping")
            self._stop.set()

    @staticmethod
    async def _guard(coroutine: Coroutine[Any, Any, None], what: str) -> None:
        """A crash in one camera is logged with its cause and ends that camera only."""
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed", what)

    def _on_camera_status(self, camera: str, online: bool) -> None:
        self._nvr.on_camera_status(camera, online)
        if self._camera_online.get(camera) == online:
            return
        self._camera_online[camera] = online
        topic = f"{self._publisher.prefix}/{camera}/status"
        self._publisher.set_retained(topic, b"online" if online else b"offline", self._config.mqtt.qos.status)

    def _on_result(self, result: Result) -> None:
        camera = result.frame.camera
        if result.error is not None:
            if camera not in self._errors_logged:  # once per camera: a decode bug would repeat every frame
                self._errors_logged.add(camera)
                log.error("camera %s: decoding failed: %s", camera, result.error)
            return
        if self._nvr.paused(camera):
            return  # detection switched off while this frame was in inference
        seq = self._seq.get(camera, 0)
        self._seq[camera] = seq + 1
        payload = detection_payload(result, seq, time.time())
        self._publisher.publish(
            f"{self._publisher.prefix}/{camera}/detections", payload, self._config.mqtt.qos.detections
        )
        self._nvr.on_result(result)
