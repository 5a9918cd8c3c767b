"""How edged logs in to the broker: the password (never from the YAML file unless asked) and TLS.

Order: the one source the config names (`password_env`, `password_file`, or a plain `password`
with `allow_plain_password: true`); otherwise the systemd credential (`LoadCredential=`), when
edged runs with one. Every failure names the key and what to do, never the secret itself.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edged import systemd
from edged.config import MqttConfig, TlsConfig
from edged.errors import ConfigError


def mqtt_password(config: MqttConfig, environ: Mapping[str, str], source: Path | str) -> str | None:
    """The broker password, or None to connect without one; raises ConfigError naming the key."""
    if config.password is not None:
        return config.password
    if config.password_env is not None:
        value = environ.get(config.password_env)
        if not value:
            raise ConfigError(
                f"{source}: mqtt.password_env: environment variable {config.password_env} is not set or empty: "
                "set it to the broker password"
            )
        return value
    if config.password_file is not None:
        return _read_password_file(config.password_file, source)
    if config.username is None:
        return None
    name = config.credential_name
    try:
        # A file we are handed by systemd: a read error is a deployment error worth stopping for.
        credential = systemd.credential(name)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"{source}: mqtt.credential: cannot read systemd credential {name!r} "
            f"({getattr(error, 'strerror', None) or type(error).__name__}): check LoadCredential= in the unit "
            "and that the file is UTF-8 text"
        ) from None
    if credential is None:
        # Named in the file and systemd handed credentials over, but not this one: a password is expected, not
        # an anonymous login. (Outside systemd, say `edged check` in a shell, there is nothing to look in.)
        if config.credential is not None and systemd.credentials_directory() is not None:
            raise ConfigError(
                f"{source}: mqtt.credential: systemd credential {name!r} is not among those handed over in "
                f"${systemd.CREDENTIALS_DIRECTORY_ENV}: add LoadCredential={name}:<file> to the unit"
            )
        return None
    if not (value := _first_line(credential)):
        raise ConfigError(
            f"{source}: mqtt.credential: systemd credential {name!r} is empty: write the broker "
            "password into the file its LoadCredential= line names"
        )
    return value


def _first_line(text: str) -> str:
    """A password file's first line: the same rule whether edged reads the file or systemd hands it over."""
    return text.split("\n", 1)[0].rstrip("\r")


def _read_password_file(path: Path, source: Path | str) -> str:
    try:
        value = _first_line(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: mqtt.password_file: {path} not found: create it or fix the path") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ConfigError(
            f"{source}: mqtt.password_file: cannot read {path} ({reason}): edged's user must be able to read it"
        ) from None
    if not value:
        raise ConfigError(f"{source}: mqtt.password_file: {path} is empty: write the broker password into it")
    return value


@dataclass(frozen=True)
class MqttSecurity:
    """What edged needs to log in to the broker, resolved once at start (and by `edged check`)."""

    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None


def mqtt_security(config: MqttConfig, environ: Mapping[str, str], source: Path | str) -> MqttSecurity:
    password = mqtt_password(config, environ, source)
    return MqttSecurity(password, None if config.tls is None else tls_context(config.tls, source))


def tls_context(tls: TlsConfig, source: Path | str) -> ssl.SSLContext:
    """A client context that verifies the broker; each bad file is named in the error."""
    try:
        context = ssl.create_default_context(cafile=None if tls.ca is None else str(tls.ca))
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(
            f"{source}: mqtt.tls.ca: {tls.ca} is not a usable CA certificate ({_reason(error)}): "
            "give the PEM file of the CA that signed the broker's certificate"
        ) from None
    if tls.cert is not None and tls.key is not None:
        try:
            context.load_cert_chain(str(tls.cert), str(tls.key))
        except (ssl.SSLError, OSError) as error:
            raise ConfigError(
                f"{source}: mqtt.tls.cert/key: cannot use {tls.cert} with {tls.key} ({_reason(error)}): "
                "give a PEM certificate and the unencrypted private key that belongs to it"
            ) from None
    if tls.insecure:
        context.check_hostname = False  # the chain is still verified; only the name check goes
    return context


def _reason(error: OSError) -> str:
    return str(getattr(error, "reason", None) or error.strerror or type(error).__name__)
