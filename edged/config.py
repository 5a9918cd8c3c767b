"""The configuration file: a typed schema, and loading with env substitution and path resolution.

Everything a user can get wrong in the file is caught here, before anything starts, and reported
as one line that names the file, the key path and the bad value.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import types
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edged.errors import ConfigError, ModelError
from edged.models import ModelSpec, models_dir, resolve
from edged.redact import redact_url

CAMERA_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def plain_topic(value: str) -> str:
    """A topic edged publishes under: no wildcards, no empty first or last level."""
    if not value or any(c in value for c in "#+\0") or value.startswith("/") or value.endswith("/"):
        raise ValueError("must be a plain MQTT topic without wildcards or leading/trailing '/'")
    return value


PlainTopic = Annotated[str, AfterValidator(plain_topic)]
_ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


class _Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Qos = Literal[0, 1, 2]


class QosConfig(_Strict):
    detections: Qos = 0
    status: Qos = 1


class Backoff(_Strict):
    """Waits between reconnection attempts: `min` doubling up to `max`, each with ±20 % jitter."""

    min: float = Field(default=1.0, gt=0.0, le=3600.0)
    max: float = Field(default=30.0, gt=0.0, le=3600.0)

    @model_validator(mode="after")
    def _ordered(self) -> Backoff:
        if self.min > self.max:
            raise ValueError(f"min ({self.min:g} s) must not exceed max ({self.max:g} s)")
        return self


class TlsConfig(_Strict):
    """MQTT over TLS: the broker is verified against `ca`; `cert` and `key` identify edged to it."""

    ca: Path | None = None  # None: the system's trusted CAs
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False  # skip the host name check (never the chain): for brokers addressed by IP

    @field_validator("ca", "cert", "key")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        return None if path is None else _existing_file(path, f"file not found: {path}: give the path of a PEM file")

    @model_validator(mode="after")
    def _cert_with_key(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError(
                "cert and key go together: give both (a client certificate and its private key) or neither"
            )
        return self


DEFAULT_CREDENTIAL = "mqtt-password"  # the name systemd/edged.service passes with LoadCredential=


class MqttConfig(_Strict):
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)  # 8883 when `tls` is given (see _default_port)
    topic_prefix: PlainTopic = "edged"
    client_id: str = Field(default="", min_length=1)  # see _default_client_id
    username: str | None = None
    # The password comes from one of these; see edged/secrets.py for the order and the reasons.
    password_env: str | None = None  # name of an environment variable
    password_file: Path | None = None
    # A systemd credential ($CREDENTIALS_DIRECTORY): one named here must be there; unnamed, DEFAULT_CREDENTIAL is
    # used when present.
    credential: str | None = None
    password: str | None = Field(default=None, repr=False)  # plain text: refused unless allow_plain_password
    allow_plain_password: bool = False
    tls: TlsConfig | None = None
    keepalive: int = Field(default=30, ge=5, le=3600)
    qos: QosConfig = QosConfig()
    outbox_size: int = Field(default=10_000, ge=1)
    inflight: int = Field(default=20, ge=1, le=65535)  # QoS>0 messages sent but not yet acknowledged
    backoff: Backoff = Backoff()

    @field_validator("host")
    @classmethod
    def _bare_host(cls, host: str) -> str:
        if "/" in host or (":" in host and not _ipv6_address(host)):
            raise ValueError(
                f"{host!r} is not a bare host name or address: give the port in mqtt.port and TLS in mqtt.tls "
                "(e.g. host: broker.lan, port: 8883, tls: {})"
            )
        return host

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_not_empty(cls, tls: Any) -> Any:
        if tls is None:  # `tls:` with every line under it commented out
            raise ValueError(
                "is empty: write `tls: {}` for TLS verified against the system's CAs, or remove the key for plain MQTT"
            )
        return tls

    @field_validator("credential")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or value in (".", "..") or "/" in value or "\0" in value):
            raise ValueError("must be a plain credential name as given to LoadCredential= (no '/')")
        return value

    @property
    def credential_name(self) -> str:
        return self.credential or DEFAULT_CREDENTIAL

    @model_validator(mode="before")
    @classmethod
    def _default_client_id(cls, data: Any) -> Any:
        """`edged-<hostname>`, and the topic prefix after it when that is not the default: a broker drops a
        client when another connects with its id, so two edged on one host (each with its own prefix) would
        keep knocking each other off."""
        if isinstance(data, dict) and data.get("client_id") is None:
            default_prefix = cls.model_fields["topic_prefix"].default
            prefix = data.get("topic_prefix", default_prefix)
            suffix = "" if prefix == default_prefix else f"-{prefix}"
            data = {**data, "client_id": f"edged-{socket.gethostname()}{suffix}"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _default_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("port") is None and data.get("tls") is not None:
            data = {**data, "port": 8883}  # MQTT over TLS's registered port
        return data

    @model_validator(mode="after")
    def _password_rules(self) -> MqttConfig:
        sources = ("password", "password_env", "password_file", "credential")
        given = [key for key in sources if getattr(self, key) is not None]
        if len(given) > 1:
            raise ValueError(f"give the password one way only, not {' and '.join(given)}")
        if self.password is not None and not self.allow_plain_password:
            # Not echoed: the value is the secret. Config files get copied, diffed and pasted into tickets.
            raise ValueError(
                "password: a plain-text password in the config file is refused: use password_file, "
                "password_env or the systemd credential (or set allow_plain_password: true)"
            )
        if given and self.username is None:
            raise ValueError(f"{given[0]} is set but username is not: MQTT sends a password only with a user name")
        return self


class ModelConfig(_Strict):
    """A model by `path` (its .xml) or by descriptor `name` (files found in the models folder)."""

    path: Path | None = None
    name: str | None = None
    precision: str | None = None  # with `name`: which of the descriptor's precisions (default: its first)
    device: str = "CPU"
    confidence: float | None = Field(default=None, gt=0.0, le=1.0)  # default: the descriptor's, else 0.5
    nms_iou: float | None = Field(default=None, gt=0.0, le=1.0)  # ssh family; default 0.3
    resize: Literal["stretch", "letterbox"] | None = None  # default: the descriptor's, else stretch
    # In flight. Default: OpenVINO's optimal number, + 2 when a camera of the model is a file at full speed.
    requests: int | None = Field(default=None, ge=1, le=64)

    @field_validator("path")
    @classmethod
    def _model_file_exists(cls, path: Path | None) -> Path | None:
        missing = f"model file not found: {path}: give the path of the model's .xml file"
        return None if path is None else _existing_file(path, missing)

    @model_validator(mode="after")
    def _path_or_name(self) -> ModelConfig:
        if (self.path is None) == (self.name is None):
            raise ValueError("give the model either as `path` (its .xml file) or as a descriptor `name`")
        if self.path is not None and self.precision is not None:
            raise ValueError(
                "precision: goes with a descriptor `name`; with `path`, the .xml given is the precision used"
            )
        return self


SourceKind = Literal["rtsp", "http", "device", "video", "image"]


class CameraConfig(_Strict):
    url: str = Field(min_length=1)
    model: str | None = None  # a key of `models`; default: the first model
    fps: float | None = Field(default=None, gt=0.0, le=240.0)
    realtime: bool = True
    loop: bool = True
    stall_timeout: float = Field(default=10.0, gt=0.0, le=3600.0)  # no frame for this long: reopen
    backoff: Backoff = Backoff()
    # How FFmpeg spreads an RTSP stream's or a file's decoding over threads: `slice` holds no frame back but
    # decodes a stream of one slice per frame on one core; `frame` uses every core and holds each frame back
    # one frame per extra thread. Default: slice for live streams, frame for files.
    decoder_threads: Literal["slice", "frame"] | None = None

    @field_validator("url", mode="before")
    @classmethod
    def _url_text(cls, value: object) -> object:
        # `url: 0` (the first USB camera) arrives from YAML as an int.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("url")
    @classmethod
    def _readable_source(cls, url: str, info: ValidationInfo) -> str:
        kind = source_kind(url)  # raises for unsupported schemes
        if kind in ("rtsp", "http"):
            _check_stream_address(url)
        # At a reload, a file a running camera already reads may be gone for a while (a share that dropped out):
        # that camera retries it as an outage, and it must not block the reload of the others.
        if kind in ("video", "image") and url not in (info.context or {}).get("files_in_use", ()):
            _existing_file(Path(url), f"file not found: {url}: give a video or image file, a stream URL or a device")
        return url

    @property
    def kind(self) -> SourceKind:
        return source_kind(self.url)

    @property
    def waits_for_detection(self) -> bool:
        """A file read as fast as detection goes (`realtime: false`): throughput, not latency, is its measure."""
        return self.kind in ("video", "image") and not self.realtime

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)


def _camera_name(name: str) -> str:
    if not CAMERA_NAME.match(name):
        raise ValueError("a camera name may only contain letters, digits, '_' and '-' (it becomes an MQTT topic level)")
    return name


CameraName = Annotated[str, AfterValidator(_camera_name)]


def single_model_key(model: object) -> str:
    """The name a model gets under the single `model:` form: its descriptor name or its file's stem."""
    if isinstance(model, dict):
        if isinstance(model.get("name"), str):
            return str(model["name"])
        if isinstance(model.get("path"), str):
            return Path(model["path"]).stem
    return "model"


def _model_name(name: str) -> str:
    if not CAMERA_NAME.match(name):
        raise ValueError("a model name may only contain letters, digits, '_' and '-'")
    return name


ModelName = Annotated[str, AfterValidator(_model_name)]


class EventsConfig(_Strict):
    """Debounced face presence per camera (see docs/mqtt.md, `{prefix}/events`)."""

    enabled: bool = True
    min_frames: int = Field(default=2, ge=1, le=1000)  # consecutive processed frames with a face to start
    end_after: float = Field(default=2.0, gt=0.0, le=3600.0)  # seconds without a face to end
    qos: Qos = 1


class SnapshotsConfig(_Strict):
    """A JPEG on `{prefix}/{camera}/snapshot` when an event starts or its best face improves."""

    enabled: bool = True
    crop: bool = False  # the best face with a margin instead of the whole frame
    boxes: bool = True  # draw the faces' boxes
    height: int = Field(default=270, ge=16, le=4320)
    quality: int = Field(default=70, ge=1, le=100)
    qos: Qos = 0


class StatsConfig(_Strict):
    enabled: bool = True
    interval: float = Field(default=30.0, ge=1.0, le=86400.0)  # seconds between `{prefix}/stats` messages


class MetricsConfig(_Strict):
    """Prometheus `/metrics`; off unless a port is given."""

    port: int | None = Field(default=None, ge=1, le=65535)
    host: str = "127.0.0.1"  # loopback: exposing figures to the network is a deliberate choice


class HomeAssistantConfig(_Strict):
    enabled: bool = False
    discovery_prefix: PlainTopic = "homeassistant"


class Config(_Strict):
    mqtt: MqttConfig = MqttConfig()
    models_dir: Path | None = None  # where descriptor-named models' files are; default $EDGED_MODELS_DIR
    models: Annotated[dict[ModelName, ModelConfig], Field(min_length=1)]
    cameras: Annotated[dict[CameraName, CameraConfig], Field(min_length=1)]
    events: EventsConfig = EventsConfig()
    snapshots: SnapshotsConfig = SnapshotsConfig()
    stats: StatsConfig = StatsConfig()
    metrics: MetricsConfig = MetricsConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    _single_model: bool = PrivateAttr(default=False)  # written as `model:`: errors speak of that key

    @model_validator(mode="wrap")
    @classmethod
    def _remember_the_form(cls, raw: Any, handler: ModelWrapValidatorHandler[Config]) -> Config:
        config = handler(raw)
        config._single_model = isinstance(raw, dict) and "model" in raw
        return config

    @model_validator(mode="before")
    @classmethod
    def _single_model_form(cls, raw: Any) -> Any:
        """`model:` (one model, the v0 form) is `models:` with a single entry named after the model."""
        if not isinstance(raw, dict) or "model" not in raw:
            return raw
        if "models" in raw:
            raise ValueError("models: give either `model` (one model) or `models` (several), not both")
        raw = dict(raw)
        single = raw.pop("model")
        raw["models"] = {single_model_key(single): single}
        return raw

    @model_validator(mode="after")
    def _references_resolve(self) -> Config:
        self.model_specs()  # every model's files and descriptor can be found
        for name, camera in self.cameras.items():
            if camera.model is not None and camera.model not in self.models:
                raise ValueError(
                    f"cameras.{name}.model: no model named {camera.model!r}; configured: {', '.join(self.models)}"
                )
        return self

    @model_validator(mode="after")
    def _events_can_start(self) -> Config:
        """Frames `end_after` or more apart each end the face streak before it could become an event."""
        if not self.events.enabled:
            return self
        for name, camera in self.cameras.items():
            if camera.fps is not None and 1.0 / camera.fps >= self.events.end_after:
                raise ValueError(
                    f"cameras.{name}.fps: at {camera.fps:g} a second, frames are {1.0 / camera.fps:g} s apart, not "
                    f"less than events.end_after ({self.events.end_after:g} s): no face event could ever start; raise "
                    "fps or events.end_after"
                )
        return self

    def model_specs(self) -> dict[str, ModelSpec]:
        folder = models_dir(self.models_dir)
        return {key: resolve(key, folder=folder, **model.model_dump()) for key, model in self.models.items()}

    def model_key(self, name: str, field: str) -> str:
        """Where the user wrote a model's `field`: `model.path` for the single form, else `models.<name>.path`."""
        return f"model.{field}" if self._single_model else f"models.{name}.{field}"

    def model_error(self, config_path: Path | None, name: str, error: ModelError) -> ModelError:
        """The error of model `name`, naming the config file (if any) and the key it came from (`models.x.device`)."""
        field = error.key if error.key != "path" or self.models[name].path else "name"
        where = f"{config_path}: " if config_path is not None else ""
        return ModelError(f"{where}{self.model_key(name, field)}: {error}", key=error.key)

    def model_of(self, camera: str) -> str:
        return self.cameras[camera].model or next(iter(self.models))

    def throughput_bound(self, model: str) -> bool:
        """Some camera of `model` is a file read at full speed: it gets two requests more in flight."""
        return any(camera.waits_for_detection for name, camera in self.cameras.items() if self.model_of(name) == model)


def source_kind(url: str) -> SourceKind:
    """What a camera URL points at; raises ValueError for schemes edged cannot read."""
    scheme, sep, _ = url.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme in ("rtsp", "rtsps"):
            return "rtsp"
        if scheme in ("http", "https"):
            return "http"
        raise ValueError(
            f"unsupported URL scheme {scheme!r}: use one of {', '.join(_STREAM_SCHEMES)}, "
            "a video or image file, /dev/videoN or a device number"
        )
    if url.isdigit() or re.fullmatch(r"/dev/video\d+", url):
        return "device"
    return "image" if Path(url).suffix.lower() in _IMAGE_SUFFIXES else "video"


# ---------------------------------------------------------------------------------------------
# Loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; two cameras with one name is a mistake to report."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults`: construct_mapping merges it, and a key given beside it overrides it
        key = loader.construct_object(key_node)
        if not isinstance(key, Hashable):  # YAML's `? [a, b]`: a key no setting has
            raise ConfigError(f"line {key_node.start_mark.line + 1}: a key must be a plain name, not a list or mapping")
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}: each key may appear once")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_config(
    path: Path | str, environ: dict[str, str] | None = None, files_in_use: frozenset[str] = frozenset()
) -> Config:
    """Read, substitute, resolve and validate a config file; every problem raises ConfigError. `files_in_use`:
    camera files running cameras read, which may be missing for now (see CameraConfig._readable_source)."""
    path = Path(path)
    raw = _read_yaml(path)
    # Top-level `x-...` keys are edged's to ignore (as in Compose files): a place for YAML anchors that
    # cameras merge with `<<: *name`.
    raw = {key: value for key, value in raw.items() if not (isinstance(key, str) and key.startswith("x-"))}
    raw = _substitute_env(raw, os.environ if environ is None else environ, path, ())
    _names_as_text(raw, path)
    try:
        _resolve_paths(raw, path.parent.resolve())
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    try:
        return Config.model_validate(raw, context={"files_in_use": files_in_use})
    except ValidationError as error:
        message = _describe(path, error)
        if "model" in raw:  # speak of the keys as the user wrote them
            message = message.replace(f": models.{single_model_key(raw['model'])}", ": model")
        raise ConfigError(message) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found: pass an existing file with -c") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder: pass the config file itself with -c") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}): save the config file as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror}): check its permissions") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML: {where}{problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty: it needs at least 'model' and 'cameras'")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the config must be a mapping of keys (model, cameras, ...), not a {type(data).__name__}"
        )
    return data


def _names_as_text(raw: dict[str, Any], path: Path) -> None:
    """Camera and model names are text, but YAML reads `123:` as a number and `yes:`/`on:` as booleans."""
    for section in ("cameras", "models"):
        entries = raw.get(section)
        if not isinstance(entries, dict):
            continue
        for key in entries:
            if isinstance(key, bool):
                raise ConfigError(
                    f"{path}: {section}: YAML reads the name {str(key).lower()!r} as a yes/no value: put the name in "
                    "quotes (e.g. 'yes':)"
                )
        # `123:` names a camera "123", as written; the order stays (the first model is the default one).
        raw[section] = {str(key) if isinstance(key, int | float) else key: value for key, value in entries.items()}


def _substitute_env(value: Any, environ: Any, path: Path, where: tuple[str, ...]) -> Any:
    """`${VAR}` and `${VAR:-default}` in string values, after parsing, so values never change YAML syntax."""
    if isinstance(value, dict):
        return {key: _substitute_env(item, environ, path, (*where, str(key))) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute_env(item, environ, path, (*where, str(i))) for i, item in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group("name"), match.group("default")
        if name in environ:
            return str(environ[name])
        if default is not None:
            return default
        raise ConfigError(
            f"{path}: {'.'.join(where)}: environment variable {name} is not set: set it or write ${{{name}:-default}}"
        )

    return _ENV_REFERENCE.sub(replace, value)


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Relative file paths are relative to the config file, wherever edged is started from."""
    models = [raw.get("model"), *(raw["models"].values() if isinstance(raw.get("models"), dict) else [])]
    for model in models:
        if isinstance(model, dict) and isinstance(model.get("path"), str):
            model["path"] = str(_relative_to(base, model["path"]))
    if isinstance(raw.get("models_dir"), str):
        raw["models_dir"] = str(_relative_to(base, raw["models_dir"]))
    mqtt = raw.get("mqtt")
    if isinstance(mqtt, dict):
        if isinstance(mqtt.get("password_file"), str):
            mqtt["password_file"] = str(_relative_to(base, mqtt["password_file"]))
        tls = mqtt.get("tls")
        if isinstance(tls, dict):
            for key in ("ca", "cert", "key"):
                if isinstance(tls.get(key), str):
                    tls[key] = str(_relative_to(base, tls[key]))
    cameras = raw.get("cameras")
    if not isinstance(cameras, dict):
        return
    for camera in cameras.values():
        url = camera.get("url") if isinstance(camera, dict) else None
        if isinstance(url, str) and url and "://" not in url and not url.isdigit() and not url.startswith("/dev/"):
            camera["url"] = str(_relative_to(base, url))


def _relative_to(base: Path, value: str) -> Path:
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # `~someone/...` for a user this machine does not have
        raise ConfigError(f"{value}: '~' names no user of this machine: write the full path") from None
    return path if path.is_absolute() else (base / path).resolve()


def _ipv6_address(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def _check_stream_address(url: str) -> None:
    """A host, and a port a connection can use: else ValueError (found here, not at the first connect)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or above 65535
        port = 0
    after_authority = url[url.find(parts.netloc) + len(parts.netloc) :] if parts.netloc else ""
    if "@" in after_authority and ("@" in parts.netloc or port == 0):
        # user:p@ss/word@host: the authority ends at the first '/', and FFmpeg would connect to the wrong host.
        raise ValueError(
            f"the password in {redact_url(url)!r} seems to hold '/', '?', '#' or '@', which end a URL's host part: "
            "percent-encode them in the URL (%2F, %3F, %23, %40)"
        )
    if not parts.hostname:
        raise ValueError(f"no host in {redact_url(url)!r}: give the camera's address, e.g. rtsp://host:554/path")
    if port == 0:
        raise ValueError(
            f"the port in {redact_url(url)!r} is not a number from 1 to 65535: give the camera's port, "
            "or leave it out for the scheme's own (554 for rtsp, 80 for http)"
        )


def _existing_file(path: Path, missing: str) -> Path:
    """For validators: a file that is there, else ValueError (pydantic reports it under its key)."""
    try:
        if path.is_file():
            return path
    except OSError as error:  # e.g. a folder on the way the service user may not enter
        raise ValueError(f"cannot look at {path} ({error.strerror}): check the permissions of its folders") from None
    raise ValueError(missing)


# What to give instead, by the kind of value pydantic could not use (its error types).
_WANTED = {
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "give a whole number"),
    **dict.fromkeys(("float_type", "float_parsing"), "give a number"),
    **dict.fromkeys(("bool_type", "bool_parsing"), "give true or false"),
    "string_type": "give text",
    "string_too_short": "it must not be empty",
}


def _describe(path: Path, error: ValidationError) -> str:
    """One line per problem: file, key path, what is wrong, what to do, the value given. A misspelt key comes
    first and names the key it was probably meant to be (that key is then missing too: not said twice)."""
    items = error.errors(include_url=False)
    misspelt = _misspellings(items)
    meant = {(*loc[:-1], key) for loc, key in misspelt.items()}  # missing keys a misspelling already explains
    lines = []
    for item in sorted(items, key=lambda item: item["type"] != "extra_forbidden"):
        loc = ".".join(str(part) for part in item["loc"] if part != "[key]")
        message = item["msg"].removeprefix("Value error, ")
        if not loc or re.match(r"[a-z_]+: ", message):  # checks over several keys name their own key
            head, _, message = message.partition(": ")
            loc = f"{loc}.{head}" if loc else head
        kind = item["type"]
        if kind == "extra_forbidden":
            guess = f"did you mean {misspelt[item['loc']]}? " if item["loc"] in misspelt else ""
            message = f"unknown key: {guess}check its spelling and indentation (see README for the keys)"
        elif kind == "missing":
            if item["loc"] in meant:
                continue
            message = "required key is missing"
        elif kind == "too_short" and isinstance(item.get("input"), dict):
            message = "is empty: configure at least one"
        elif kind in ("model_type", "dict_type"):
            message = "takes keys, indented below it, not a single value (see README for its keys)"
        elif (wanted := _WANTED.get(kind)) is not None:
            message = f"{message}: {wanted}"
        value = item.get("input")
        shown = "" if kind in ("missing", "extra_forbidden") or isinstance(value, dict) else f" (got {value!r})"
        if "not found" in message or "password" in loc:
            shown = ""  # the message already names the path; a password value is never echoed
        lines.append(redact_url(f"{path}: {loc}: {message}{shown}"))
    return "\n".join(lines)


def _misspellings(items: list[Any]) -> dict[tuple[Any, ...], str]:
    """Unknown key's location -> the key of the schema at that place it resembles (`ulr` -> `url`)."""
    found = {}
    for item in items:
        if item["type"] != "extra_forbidden" or not item["loc"]:
            continue
        *parent, key = item["loc"]
        if close := difflib.get_close_matches(str(key), _keys_at(tuple(parent)), n=1, cutoff=0.6):
            found[tuple(item["loc"])] = close[0]
    return found


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys the schema allows inside the mapping at `loc` (say `cameras.door`): walks Config's fields."""
    node: Any = Config
    for part in loc:
        node = _unwrapped(node)
        if isinstance(node, type) and issubclass(node, BaseModel) and str(part) in node.model_fields:
            node = node.model_fields[str(part)].annotation
        elif get_origin(node) is dict:  # cameras, models: the part is a name the user chose
            node = get_args(node)[1]
        else:
            return []
    node = _unwrapped(node)
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def _unwrapped(annotation: Any) -> Any:
    """`Annotated[X, ...]` and `X | None` as X."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, types.UnionType):
            options = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation
