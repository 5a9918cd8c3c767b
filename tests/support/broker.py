"""A real Mosquitto 2.x broker on free 127.0.0.1 ports, for tests.

Each instance owns a temporary directory with its generated config, password file, certificates,
persistence database and log. ``restart()`` reuses the same ports, so a client under test sees a
broker that went away and came back, exactly like a production outage.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import LOCALHOST, ServerProcess, free_port, port_accepts, tail, track_child, wait_until

MOSQUITTO = os.environ.get("EDGED_MOSQUITTO", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = os.environ.get("EDGED_MOSQUITTO_PASSWD", "mosquitto_passwd")
OPENSSL = os.environ.get("EDGED_OPENSSL", "openssl")


# Type of the ``broker_factory`` fixture: keyword arguments of Mosquitto -> started broker.
BrokerFactory = Callable[..., "Mosquitto"]


class BrokerError(RuntimeError):
    """The broker did not start or stop as asked; the message carries its log."""


@dataclass(frozen=True)
class TlsFiles:
    """A throw-away PKI: one CA that signed a server and a client certificate."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BrokerError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _sign(directory: Path, name: str, subject: str, extensions: str) -> None:
    """Create ``name.key`` and ``name.crt`` in ``directory``, signed by ``ca.key``."""
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    # P-256 keys: generated in milliseconds, unlike RSA, which keeps the fixture fast.
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-sha256", "-extfile", ext_file.name, "-out", f"{name}.crt",
        cwd=directory,
    )  # fmt: skip


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate a CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-sha256", "-subj", "/CN=edged test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    # Key identifiers and key usages keep the chain valid under strict X.509 verification
    # (Python 3.13 turns VERIFY_X509_STRICT on by default).
    common = (
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _sign(
        directory, "server", f"/CN={LOCALHOST}",
        common + "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )  # fmt: skip
    _sign(directory, "client", "/CN=edged-test-client", common + "extendedKeyUsage=clientAuth\n")
    return TlsFiles(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


def make_password_file(path: Path, users: Mapping[str, str]) -> None:
    path.write_text("")
    for name, password in users.items():
        result = subprocess.run(
            [MOSQUITTO_PASSWD, "-b", str(path), name, password], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BrokerError(f"mosquitto_passwd failed for {name!r}:\n{result.stdout}{result.stderr}")


class Mosquitto(ServerProcess):
    """A mosquitto process with a generated config.

    - ``port``: plain MQTT listener (always present).
    - ``tls_port``: TLS listener when ``tls=True`` (else ``None``); ``ca_path``, ``client_cert`` and
      ``client_key`` are the files a client needs. ``require_client_cert`` makes the TLS listener
      refuse clients without a certificate signed by the CA.
    - ``users``: name -> password, written with ``mosquitto_passwd``; when given, anonymous clients
      are refused unless ``allow_anonymous=True``.
    - ``persistence``: keep sessions and queued QoS>0 messages on disk across ``restart()``
      (mosquitto saves them on SIGTERM). Off by default: a restart then loses every session.
    """

    host = LOCALHOST

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        allow_anonymous: bool | None = None,
        tls: bool = False,
        require_client_cert: bool = False,
        persistence: bool = False,
        workdir: Path | None = None,
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edged-mosquitto-"))
        self.users = dict(users or {})
        self.allow_anonymous = (not self.users) if allow_anonymous is None else allow_anonymous
        self.persistence = persistence
        self.require_client_cert = require_client_cert
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._stderr_path = self.workdir / "stderr.log"
        self.port = 0
        self.tls_port: int | None = None
        self._tls_files = make_tls_files(self.workdir / "tls") if tls else None
        if self.users:
            make_password_file(self.workdir / "passwords", self.users)
        self._process = None

    # --- TLS material for clients -------------------------------------------------------------

    @property
    def tls_files(self) -> TlsFiles:
        if self._tls_files is None:
            raise BrokerError("this broker was created without tls=True")
        return self._tls_files

    @property
    def ca_path(self) -> Path:
        return self.tls_files.ca_cert

    @property
    def client_cert(self) -> Path:
        return self.tls_files.client_cert

    @property
    def client_key(self) -> Path:
        return self.tls_files.client_key

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start on fresh free ports the first time, on the same ports afterwards."""
        if self.running:
            return
        first_start = self.port == 0
        attempts = 3 if first_start else 1
        for attempt in range(attempts):
            if first_start:
                # Another process may grab a probed port before mosquitto binds it: retry.
                self.port = free_port()
                self.tls_port = free_port() if self._tls_files is not None else None
            try:
                self._launch(timeout)
                return
            except BrokerError:
                if attempt == attempts - 1:
                    raise

    def restart(self, *, graceful: bool = True, downtime: float = 0.0, timeout: float = 10.0) -> None:
        """Stop (or kill) and start again on the same ports, optionally staying down a while."""
        if graceful:
            self.stop(timeout)
        else:
            self.kill()
        if downtime > 0:
            time.sleep(downtime)
        self.start(timeout)

    def close(self) -> None:
        """Stop the broker and delete its directory."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        """Broker log plus anything mosquitto printed before its log file was open."""
        return tail(self._stderr_path) + tail(self.log_path)

    def __repr__(self) -> str:
        tls = f" tls_port={self.tls_port}" if self.tls_port else ""
        return f"<Mosquitto {self.host}:{self.port}{tls} running={self.running}>"

    # --- internals -------------------------------------------------------------------------------

    def _launch(self, timeout: float) -> None:
        self.config_path.write_text(self._config())
        with self._stderr_path.open("ab") as stderr:
            self._process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        track_child(self._process)
        ports = [p for p in (self.port, self.tls_port) if p]
        ready = wait_until(lambda: not self.running or all(port_accepts(self.host, p) for p in ports), timeout)
        if not (ready and self.running):
            self._end(signal.SIGKILL, 5.0)
            raise BrokerError(f"mosquitto did not come up on {self.host}:{ports}\n{self.log_text()}")

    def _config(self) -> str:
        lines = [
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"log_dest file {self.log_path}",
            "log_type all",
            "log_timestamp_format %H:%M:%S",
            "connection_messages true",
            f"listener {self.port} {self.host}",
        ]
        if os.geteuid() == 0:
            # Run as root, mosquitto would drop to user "mosquitto", which cannot read our tmp dir.
            lines.insert(0, "user root")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        else:
            lines.append("persistence false")
        if self.users:
            lines.append(f"password_file {self.workdir / 'passwords'}")
        if self._tls_files is not None and self.tls_port:
            files = self._tls_files
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {files.ca_cert}",
                f"certfile {files.server_cert}",
                f"keyfile {files.server_key}",
                f"require_certificate {'true' if self.require_client_cert else 'false'}",
            ]
        return "\n".join(lines) + "\n"
