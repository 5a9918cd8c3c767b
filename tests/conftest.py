"""Shared fixtures: real test data, a real MQTT broker, real RTSP/MJPEG cameras, a subscriber.

Nothing is skipped when a part is missing: a missing data directory or system package is a broken
test environment and fails loudly (``.ci/install-system-deps`` installs the system parts).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import BrokerFactory, Mosquitto
from tests.support.mjpeg import MjpegFactory, MjpegServer
from tests.support.mqtt import Subscriber, SubscriberFactory
from tests.support.rtsp import RtspFactory, RtspServer

REPO_ROOT = Path(__file__).resolve().parent.parent

# Media the default camera fixtures serve (files under $EDGED_TEST_DATA/media).
RTSP_MEDIA = "faces-1080p30.mp4"
MJPEG_MEDIA = "classroom.mp4"

_phase_reports = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    # Remember each phase's outcome so fixtures can dump server logs only for failed tests.
    report = yield
    item.stash.setdefault(_phase_reports, {})[report.when] = report
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_phase_reports, {})
    return any(report.failed for report in reports.values())


def _dump_log_if_failed(request: pytest.FixtureRequest, name: str, log: str) -> None:
    # Printed during teardown, pytest shows it under "Captured stdout teardown" of the failure.
    if _test_failed(request):
        print(f"\n----- {name} log -----\n{log}\n----- end of {name} log -----")


# --- test data -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared test data (real models and media): $EDGED_TEST_DATA, default ``<repo>/../shared``."""
    configured = os.environ.get("EDGED_TEST_DATA")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared"
    path = path if path.is_absolute() else (REPO_ROOT / path)
    path = path.resolve()
    missing = [sub for sub in ("models", "media") if not (path / sub).is_dir()]
    if missing:
        source = f"EDGED_TEST_DATA={configured!r}" if configured else "the default <repo>/../shared"
        pytest.fail(
            f"test data not found: {path} (from {source}) lacks {', '.join(m + '/' for m in missing)}. "
            "Point EDGED_TEST_DATA at the shared directory holding models/ and media/.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def media_dir(shared_dir: Path) -> Path:
    return shared_dir / "media"


@pytest.fixture(scope="session")
def models_dir(shared_dir: Path) -> Path:
    return shared_dir / "models"


# --- MQTT --------------------------------------------------------------------------------------------


@pytest.fixture
def broker_factory(request: pytest.FixtureRequest) -> Iterator[BrokerFactory]:
    """``broker_factory(users=..., allow_anonymous=..., tls=..., require_client_cert=..., persistence=...)``
    returns a started :class:`Mosquitto`; every broker made is closed at teardown."""
    made: list[Mosquitto] = []

    def make(**options: Any) -> Mosquitto:
        broker = Mosquitto(**options)
        made.append(broker)
        broker.start()
        return broker

    yield make
    for index, broker in enumerate(made):
        _dump_log_if_failed(request, f"mosquitto #{index} ({broker.host}:{broker.port})", broker.log_text())
        broker.close()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Mosquitto:
    """A started anonymous Mosquitto on a free port (plain MQTT, no persistence)."""
    return broker_factory()


@pytest.fixture
def subscriber(request: pytest.FixtureRequest) -> Iterator[SubscriberFactory]:
    """``subscriber(broker=None, topics="edged/#", *, tls=False, **Subscriber_options)`` returns a
    connected, subscribed :class:`Subscriber`; ``broker`` defaults to the ``broker`` fixture. With
    ``tls=True`` it uses the broker's TLS port and CA (and client certificate if the broker requires
    one). All subscribers are stopped at teardown."""
    made: list[Subscriber] = []

    def make(
        broker: Mosquitto | None = None, topics: str | list[str] = "edged/#", *, tls: bool = False, **options: Any
    ) -> Subscriber:
        target: Mosquitto = broker if broker is not None else request.getfixturevalue("broker")
        port = target.port
        if tls:
            assert target.tls_port is not None, "broker was made without tls=True"
            port = target.tls_port
            options.setdefault("ca_path", target.ca_path)
            if target.require_client_cert:
                options.setdefault("client_cert", target.client_cert)
                options.setdefault("client_key", target.client_key)
        sub = Subscriber(target.host, port, topics, **options)
        made.append(sub)
        return sub.start()

    yield make
    for sub in made:
        sub.stop()


# --- cameras -----------------------------------------------------------------------------------------


@pytest.fixture
def rtsp_server_factory(request: pytest.FixtureRequest, media_dir: Path) -> Iterator[RtspFactory]:
    """``rtsp_server_factory(media=None, *, loop=False, mount="/stream")`` returns a started
    :class:`RtspServer`; ``media`` defaults to faces-1080p30.mp4. All are killed at teardown."""
    made: list[RtspServer] = []

    def make(media: Path | None = None, **options: Any) -> RtspServer:
        server = RtspServer(media or media_dir / RTSP_MEDIA, **options)
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        _dump_log_if_failed(request, f"rtsp server {server.port}", server.log_text())
        server.close()


@pytest.fixture
def rtsp_server(rtsp_server_factory: RtspFactory) -> RtspServer:
    """A started RTSP camera: faces-1080p30.mp4 (1080p, 30 fps, 12 s, H.264) at ``.url``, not looped."""
    return rtsp_server_factory()


@pytest.fixture
def mjpeg_server_factory(media_dir: Path) -> Iterator[MjpegFactory]:
    """``mjpeg_server_factory(media=None, *, fps=15.0, path="/video.mjpg", max_frames=100)`` returns
    a started :class:`MjpegServer`; ``media`` defaults to classroom.mp4. All stop at teardown."""
    made: list[MjpegServer] = []

    def make(media: Path | None = None, **options: Any) -> MjpegServer:
        server = MjpegServer(media or media_dir / MJPEG_MEDIA, **options)
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def mjpeg_server(mjpeg_server_factory: MjpegFactory) -> MjpegServer:
    """A started MJPEG camera: classroom.mp4 (480x270) looped at 15 fps, at ``.url``."""
    return mjpeg_server_factory()
