"""Prometheus `/metrics`: the figures of `Telemetry`, read at scrape time, served by prometheus-client.

Nothing is counted twice: a custom collector turns the live counters into metric families when
Prometheus asks (typically every 15 s), so the frame path pays nothing for metrics. The server is
prometheus-client's own WSGI server in a daemon thread; it reads plain ints and appends nothing.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from edged.config import MetricsConfig
from edged.errors import EdgedError
from edged.stats import CameraFigures, Telemetry

log = logging.getLogger("edged.metrics")


class TelemetryCollector(Collector):
    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        t = self._telemetry
        cameras = list(t.cameras.items())  # one C-level copy: the loop may touch the dict meanwhile
        models = list(t.models.items())

        def per_camera(
            metric: CounterMetricFamily | GaugeMetricFamily, value: Callable[[CameraFigures], float]
        ) -> Metric:
            for camera, figures in cameras:
                metric.add_metric([camera], value(figures))
            return metric

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=["camera"])

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["camera"])

        yield InfoMetricFamily("edged_build", "edged version", value={"version": t.version})
        yield GaugeMetricFamily("edged_uptime_seconds", "Seconds since edged started", value=t.uptime)
        yield per_camera(
            counter("edged_camera_frames_read", "Frames read from the camera"), lambda c: c.reader.frames_read
        )
        yield per_camera(
            counter("edged_camera_frames_decoded", "Frames decoded (read minus unreferenced frames skipped)"),
            lambda c: c.reader.frames_decoded,
        )
        yield per_camera(counter("edged_frames_processed", "Frames detected and published"), lambda c: c.processed)
        yield per_camera(
            counter("edged_frames_skipped", "Frames shed because inference was busy (newest frame wins)"),
            lambda c: c.slot.skipped,
        )
        yield per_camera(
            counter("edged_camera_reconnects", "Camera (re)connection attempts"), lambda c: c.reader.reconnects
        )
        yield per_camera(gauge("edged_camera_online", "1 while the camera delivers frames"), lambda c: c.online)
        yield per_camera(
            gauge("edged_detection_enabled", "0 while detection is paused over MQTT"), lambda c: not c.slot.paused
        )

        histogram = HistogramMetricFamily(
            "edged_inference_seconds", "Inference time from submission to result, queueing included", labels=["model"]
        )
        in_flight = GaugeMetricFamily(
            "edged_inference_requests_in_flight", "Inference requests running", labels=["model"]
        )
        requests = GaugeMetricFamily(
            "edged_inference_requests", "Inference requests the model can run at once", labels=["model"]
        )
        for model, figures in models:
            histogram.add_metric([model], figures.cumulative_buckets(), figures.seconds_sum)
            in_flight.add_metric([model], figures.dispatcher.in_flight)
            requests.add_metric([model], figures.requests)
        yield from (histogram, in_flight, requests)

        mqtt = t.publisher
        yield GaugeMetricFamily("edged_mqtt_outbox_messages", "Messages queued for the broker", value=mqtt.outbox_depth)
        yield CounterMetricFamily("edged_mqtt_dropped_messages", "Messages dropped: outbox full", value=mqtt.dropped)
        yield CounterMetricFamily(
            "edged_mqtt_published_messages", "Messages handed to the broker", value=mqtt.published
        )
        yield GaugeMetricFamily(
            "edged_mqtt_connected", "1 while connected to the broker", value=mqtt.connected.is_set()
        )
        if t.snapshots is not None:
            yield CounterMetricFamily("edged_snapshots", "Snapshots published", value=t.snapshots.published)


class MetricsServer:
    """`/metrics` on `metrics.host:metrics.port` while edged runs."""

    def __init__(self, config: MetricsConfig, telemetry: Telemetry) -> None:
        self._config = config
        self.registry = CollectorRegistry()
        self.registry.register(TelemetryCollector(telemetry))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self._server: WSGIServer | None = None

    def start(self) -> None:
        """Bind now, so a taken port stops edged at start with one clear line."""
        host, port = self._config.host, self._config.port
        assert port is not None
        try:
            self._server, _ = start_http_server(port, host, self.registry)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                key, advice = "metrics.port", "choose a free port or stop what listens there"
            else:  # not an address of this machine, or a name that does not resolve
                key = "metrics.host"
                advice = "give an address of this machine (0.0.0.0 for all, 127.0.0.1 for local only)"
            problem = f"cannot serve /metrics on {host}:{port} ({error.strerror or error})"
            raise EdgedError(f"{key}: {problem}: {advice}") from None
        log.info("Prometheus metrics on http://%s:%d/metrics", host, port)

    async def stop(self) -> None:
        if self._server is not None:
            # shutdown() waits for the serving thread's next poll (up to 0.5 s): not on the loop.
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()
            self._server = None
