"""Where the MQTT password comes from, so that it never has to sit in the YAML file.

Order: the one source the config names (`password_env`, `password_file`, or a plain `password`
with `allow_plain_password: true`); otherwise the systemd credential (`LoadCredential=`), when
edged runs with one. Every failure names the key and what to do, never the secret itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edged import systemd
from edged.config import MqttConfig
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
    try:
        # A file we are handed by systemd: a read error is a deployment error worth stopping for.
        return systemd.credential(config.credential)
    except OSError as error:
        raise ConfigError(
            f"{source}: mqtt.credential: cannot read systemd credential {config.credential!r} "
            f"({error.strerror or type(error).__name__}): check LoadCredential= in the unit"
        ) from None


def _read_password_file(path: Path, source: Path | str) -> str:
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
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
