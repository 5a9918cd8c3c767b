"""`edged run` as an operator starts it: a child process, a YAML file, its stderr in a file.

Shared by the reliability, lifecycle, security and bad-input tests, which all judge edged by what
an operator or a subscriber can observe: exit codes, log lines, broker messages.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
# The small SSD model: the fastest to compile, so process start-up stays short.
_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_", "CREDENTIALS_DIRECTORY")
MODEL = "models/face-detection-retail-0004/FP32/face-detection-retail-0004.xml"


def seqs(subscriber: Any, camera: str) -> list[int]:
    """The `seq` of each detection message of `camera`, in arrival order."""
    return [m.json()["seq"] for m in subscriber.messages(f"edged/{camera}/detections")]


def largest_gap(subscriber: Any, camera: str, start: float, end: float) -> float:
    """The longest time between `camera`'s detection messages in [start, end] (monotonic seconds)."""
    times = [m.received_at for m in subscriber.messages(f"edged/{camera}/detections")]
    times = [start, *(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(times))


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def base_config(shared_dir: Path, port: int, cameras: dict[str, dict[str, Any]], **mqtt: Any) -> dict[str, Any]:
    return {
        "mqtt": {"host": "127.0.0.1", "port": port, "client_id": "edged-test", **mqtt},
        "model": {"path": str(shared_dir / MODEL)},
        "cameras": cameras,
    }


class EdgedProcess:
    def __init__(self, config: Path, log: Path, *, env: dict[str, str] | None = None, command: str = "run") -> None:
        self.log_path = log
        self._log_file = log.open("w")
        environment = {key: value for key, value in os.environ.items() if not key.startswith(_SYSTEMD_VARIABLES)}
        environment.update(env or {})  # a test under systemd must not talk to the real service manager
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edged.cli", command, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            cwd=REPO,
            env=environment,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 30.0, after: int = 0) -> re.Match[str]:
        """The first match of `pattern` in the log (from character `after` on), waiting for it."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            text = self.log()
            if (match := regex.search(text, after)) is not None:
                return match
            if self.process.poll() is not None:
                raise AssertionError(f"edged exited ({self.process.returncode}) before logging {pattern!r}:\n{text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in edged's log after {timeout} s:\n{text}")
            time.sleep(0.05)

    def send(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def stop(self, signum: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> tuple[int, float]:
        """Send `signum`; (exit code, seconds until exit)."""
        started = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(timeout)
        return code, time.monotonic() - started

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()

    def __enter__(self) -> EdgedProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
