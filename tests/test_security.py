"""MQTT over TLS with a password, against a real mosquitto with generated certificates and a
`mosquitto_passwd` file. The secret must never show: not in logs, not in anything on the broker.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.edged_process import EdgedProcess, base_config, write_config
from tests.support.broker import Mosquitto, make_tls_files

SECRET = "s3cr3t-Edged-PW"
WATCHER = ("watcher", "watcher-pw")


def _cameras(shared_dir: Path) -> dict[str, Any]:
    return {"lobby": {"url": str(shared_dir / "media" / "classroom.mp4"), "fps": 10.0}}


def _secured_broker(broker_factory: Any, **options: Any) -> Mosquitto:
    broker: Mosquitto = broker_factory(users={"edged": SECRET, WATCHER[0]: WATCHER[1]}, tls=True, **options)
    return broker


def _tls(broker: Mosquitto, client_cert: bool = False) -> dict[str, str]:
    tls = {"ca": str(broker.ca_path)}
    if client_cert:
        tls |= {"cert": str(broker.client_cert), "key": str(broker.client_key)}
    return tls


def _run_until_detections(edged: EdgedProcess, watcher: Any) -> str:
    watcher.wait_for_count("edged/lobby/detections", 5, timeout=60)
    code, _ = edged.stop(signal.SIGTERM)
    assert code == 0, edged.log()
    return edged.log()


def _line_logged_until_stopped(config: Path, pattern: str) -> tuple[str, str]:
    """Run edged until its log has a line matching `pattern`, stop it (exit 0): that line and the whole log."""
    with EdgedProcess(config, config.with_suffix(".log")) as edged:
        line = edged.wait_for_log(pattern).group(0)
        code, _ = edged.stop(signal.SIGTERM)
        log = edged.log()
    assert code == 0, log
    return line, log


def _assert_secret_hidden(log: str, watcher: Any, broker: Mosquitto) -> None:
    assert SECRET not in log
    assert all(SECRET.encode() not in m.payload and SECRET not in m.topic for m in watcher.messages())
    assert SECRET not in broker.log_text()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["password_file", "password_env", "credential"])
def test_tls_with_a_password_from_each_source_delivers_and_never_shows_the_secret(
    tmp_path: Path, shared_dir: Path, broker_factory: Any, subscriber: Any, source: str
) -> None:
    broker = _secured_broker(broker_factory)
    watcher = subscriber(broker, "#", tls=True, username=WATCHER[0], password=WATCHER[1])
    mqtt: dict[str, Any] = {"username": "edged", "tls": _tls(broker)}
    env: dict[str, str] = {}
    if source == "password_file":
        (tmp_path / "mqtt-password").write_text(SECRET + "\n")
        mqtt["password_file"] = str(tmp_path / "mqtt-password")
    elif source == "password_env":
        mqtt["password_env"] = "EDGED_TEST_MQTT_PASSWORD"
        env["EDGED_TEST_MQTT_PASSWORD"] = SECRET
    else:  # systemd's LoadCredential=mqtt-password:... hands edged this directory
        credentials = tmp_path / "credentials"
        credentials.mkdir()
        (credentials / "mqtt-password").write_text(SECRET + "\n")
        env["CREDENTIALS_DIRECTORY"] = str(credentials)
    config = write_config(
        tmp_path / "edged.yaml", base_config(shared_dir, broker.tls_port, _cameras(shared_dir), **mqtt)
    )
    with EdgedProcess(config, tmp_path / "edged.log", env=env) as edged:
        log = _run_until_detections(edged, watcher)
    assert "over TLS" in log
    _assert_secret_hidden(log, watcher, broker)


@pytest.mark.slow
def test_a_client_certificate_is_presented_when_the_broker_requires_one(
    tmp_path: Path, shared_dir: Path, broker_factory: Any, subscriber: Any
) -> None:
    broker = _secured_broker(broker_factory, require_client_cert=True)
    watcher = subscriber(broker, "#", tls=True, username=WATCHER[0], password=WATCHER[1])
    (tmp_path / "pw").write_text(SECRET)
    mqtt = {"username": "edged", "password_file": str(tmp_path / "pw"), "tls": _tls(broker, client_cert=True)}
    config = write_config(
        tmp_path / "edged.yaml", base_config(shared_dir, broker.tls_port, _cameras(shared_dir), **mqtt)
    )
    with EdgedProcess(config, tmp_path / "edged.log") as edged:
        _run_until_detections(edged, watcher)


@pytest.mark.slow
def test_a_broker_that_requires_a_client_certificate_edged_lacks_is_one_clear_tls_error(
    tmp_path: Path, shared_dir: Path, broker_factory: Any
) -> None:
    broker = _secured_broker(broker_factory, require_client_cert=True)
    (tmp_path / "pw").write_text(SECRET)
    mqtt = {"username": "edged", "password_file": str(tmp_path / "pw"), "tls": _tls(broker)}  # no cert, no key
    config = write_config(
        tmp_path / "edged.yaml", base_config(shared_dir, broker.tls_port, _cameras(shared_dir), **mqtt)
    )
    line, log = _line_logged_until_stopped(config, r".*refused edged's client certificate.*")
    assert "ERROR" in line and "CERTIFICATE_REQUIRED" in line and "mqtt.tls.cert" in line
    # The reason, said once: not paho's socket error, nor the connect's timeout read as an unreachable broker.
    assert "failed to receive on socket" not in log and "timed out" not in log
    assert SECRET not in log and "Traceback" not in log


@pytest.mark.slow
def test_a_wrong_password_is_one_clear_error_and_the_cameras_keep_running(
    tmp_path: Path, shared_dir: Path, broker_factory: Any
) -> None:
    broker = _secured_broker(broker_factory)
    wrong = "not-the-" + SECRET
    (tmp_path / "pw").write_text(wrong)
    mqtt = {"username": "edged", "password_file": str(tmp_path / "pw"), "tls": _tls(broker)}
    config = write_config(
        tmp_path / "edged.yaml", base_config(shared_dir, broker.tls_port, _cameras(shared_dir), **mqtt)
    )
    with EdgedProcess(config, tmp_path / "edged.log") as edged:
        edged.wait_for_log("refused the credentials")
        edged.wait_for_log("camera lobby: online")
        code, _ = edged.stop(signal.SIGTERM)
        log = edged.log()
    assert code == 0
    refusals = [line for line in log.splitlines() if "refused the credentials" in line]
    assert len(refusals) == 1  # said once, not on every retry
    assert "ERROR" in refusals[0] and "user 'edged'" in refusals[0] and "mqtt.username" in refusals[0]
    assert wrong not in log and "Traceback" not in log


@pytest.mark.slow
def test_a_broker_certificate_from_another_ca_is_a_clear_tls_error(
    tmp_path: Path, shared_dir: Path, broker_factory: Any
) -> None:
    broker = _secured_broker(broker_factory)
    other = make_tls_files(tmp_path / "other-ca")
    (tmp_path / "pw").write_text(SECRET)
    mqtt = {"username": "edged", "password_file": str(tmp_path / "pw"), "tls": {"ca": str(other.ca_cert)}}
    config = write_config(
        tmp_path / "edged.yaml", base_config(shared_dir, broker.tls_port, _cameras(shared_dir), **mqtt)
    )
    line, log = _line_logged_until_stopped(config, r".*TLS handshake with .* failed.*")
    assert "mqtt.tls.ca" in line and "ERROR" in line
    assert SECRET not in log and "Traceback" not in log


@pytest.mark.slow
def test_tls_pointed_at_a_plain_mqtt_port_says_it_may_not_be_a_tls_listener(
    tmp_path: Path, shared_dir: Path, broker: Mosquitto
) -> None:
    other = make_tls_files(tmp_path / "ca")
    mqtt = {"tls": {"ca": str(other.ca_cert)}}
    config = write_config(tmp_path / "edged.yaml", base_config(shared_dir, broker.port, _cameras(shared_dir), **mqtt))
    line, log = _line_logged_until_stopped(
        config, r".*MQTT: broker .* closed the connection during the TLS handshake.*"
    )
    assert "is mqtt.port a TLS listener?" in line and "ERROR" in line
    assert "Traceback" not in log


def test_a_plain_password_in_the_yaml_is_refused_without_echoing_it(tmp_path: Path, shared_dir: Path) -> None:
    mqtt = {"username": "edged", "password": SECRET}
    config = write_config(tmp_path / "edged.yaml", base_config(shared_dir, 1883, _cameras(shared_dir), **mqtt))
    with EdgedProcess(config, tmp_path / "edged.log", command="check") as edged:
        code = edged.wait()
        log = edged.log()
    assert code == 2
    assert "mqtt.password: a plain-text password in the config file is refused" in log
    assert SECRET not in log
