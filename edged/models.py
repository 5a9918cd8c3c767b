"""From a model entry in the config to everything an engine needs: files, preprocessing, decoder settings.

A model is given either by `path` (its .xml) or by descriptor `name`, whose files are looked up in the
models folder (`models_dir`, else $EDGED_MODELS_DIR, else the repository's `models/`). Either way a
known descriptor, if there is one, supplies the preprocessing and the defaults; the config overrides.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from edged.decode import AnchorConfig
from edged.descriptors import MODELS_DIR_ENV, Descriptor, DescriptorError, load_descriptor


def _builtin_descriptors() -> Path:
    """models/ of a checkout (an editable install too), else wherever pip put the wheel's copy."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "models").is_dir():
        return checkout / "models"
    return _installed_descriptors() or checkout / "models"


def _installed_descriptors() -> Path | None:
    """The wheel's share/edged/models, as its install recorded it: under the venv, ~/.local (--user) or
    /usr/local (Debian's pip) alike."""
    try:
        files = importlib.metadata.distribution("edged").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.suffix == ".yaml" and file.parts[-3:-1] == ("edged", "models") and "share" in file.parts:
            return Path(str(file.locate())).resolve().parent
    return None


BUILTIN_DESCRIPTORS = _builtin_descriptors()
DEFAULT_CONFIDENCE = 0.5

Resize = Literal["stretch", "letterbox"]


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """How a frame becomes the model's input: the resize in the camera thread, the rest in the graph."""

    resize: Resize = "stretch"
    colour_order: Literal["BGR", "RGB"] = "BGR"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str  # the key under `models:`; messages carry it
    xml: Path
    device: str
    confidence: float
    nms_iou: float | None  # None: the family's default
    anchors: AnchorConfig | None
    preprocessing: Preprocessing
    descriptor: str | None  # the descriptor that supplied defaults, if any
    requests: int | None = None  # inference requests in flight; None: edged's default (inference.default_requests)


def models_dir(configured: Path | None) -> Path:
    if configured is not None:
        return configured
    from_env = os.environ.get(MODELS_DIR_ENV)
    return Path(from_env) if from_env else BUILTIN_DESCRIPTORS


def find_descriptor(name: str, folder: Path) -> Descriptor | None:
    """A descriptor by name: the models folder's own first, then the ones shipped with edged."""
    for candidate in (folder / f"{name}.yaml", BUILTIN_DESCRIPTORS / f"{name}.yaml"):
        if candidate.is_file():
            return load_descriptor(candidate)
    return None


def descriptor_of_file(xml: Path, folder: Path) -> Descriptor | None:
    """The descriptor of a model given by path: by its file's stem, else by the file names it lists (the SSH
    model's file is not named after its descriptor, and without it the model would lose its letterbox)."""
    if (by_stem := find_descriptor(xml.stem, folder)) is not None:
        return by_stem
    for source in (folder, BUILTIN_DESCRIPTORS):
        for candidate in sorted(source.glob("*.yaml")) if source.is_dir() else ():
            try:
                descriptor = load_descriptor(candidate)
            except DescriptorError:
                continue  # someone else's broken descriptor is no reason to refuse this model
            if any(PurePosixPath(f.xml.path).name == xml.name for f in descriptor.precisions.values()):
                return descriptor
    return None


def known_descriptor_names(folder: Path) -> list[str]:
    return sorted({p.stem for d in (folder, BUILTIN_DESCRIPTORS) if d.is_dir() for p in d.glob("*.yaml")})


def resolve(
    key: str,
    *,
    path: Path | None,
    name: str | None,
    precision: str | None,
    device: str,
    confidence: float | None,
    nms_iou: float | None,
    resize: Resize | None,
    folder: Path,
    requests: int | None = None,
) -> ModelSpec:
    """Raises ValueError naming the offending key (`models.<key>.…`) and what to do."""
    where = f"models.{key}"
    try:
        if name is not None:
            descriptor = find_descriptor(name, folder)
        else:
            descriptor = descriptor_of_file(path, folder) if path is not None else None
        if name is not None and descriptor is None:
            known = ", ".join(known_descriptor_names(folder)) or "none"
            raise ValueError(f"{where}.name: no descriptor named {name!r}; known: {known}")
        if path is None:
            assert descriptor is not None
            path = _descriptor_xml(descriptor, precision, folder, where)
    except DescriptorError as error:
        raise ValueError(f"{where}: descriptor unusable: {error}") from None
    except OSError as error:  # is_file() and glob() let EACCES and EIO through (a home hidden by systemd, a dead share)
        unreadable = error.filename or folder
        raise ValueError(
            f"models_dir: {unreadable} cannot be read ({error.strerror or type(error).__name__}): give edged access "
            f"to it or set models_dir / ${MODELS_DIR_ENV} to a folder it can read"
        ) from None
    preprocessing = Preprocessing()
    if descriptor is not None:
        spec = descriptor.input
        preprocessing = Preprocessing(spec.resize, spec.colour_order, spec.mean, spec.scale)
    if resize is not None:
        preprocessing = Preprocessing(resize, preprocessing.colour_order, preprocessing.mean, preprocessing.scale)
    return ModelSpec(
        name=key,
        xml=path,
        device=device,
        confidence=confidence
        if confidence is not None
        else (descriptor.confidence if descriptor else DEFAULT_CONFIDENCE),
        nms_iou=nms_iou if nms_iou is not None else (descriptor.nms_iou if descriptor else None),
        anchors=descriptor.anchors.config() if descriptor and descriptor.anchors else None,
        preprocessing=preprocessing,
        descriptor=descriptor.name if descriptor else None,
        requests=requests,
    )


def _descriptor_xml(descriptor: Descriptor, precision: str | None, folder: Path, where: str) -> Path:
    try:
        files = descriptor.files(precision)
    except KeyError as error:
        raise ValueError(f"{where}.precision: {error.args[0]}") from None
    xml = folder / files.xml.path
    if not xml.is_file():
        raise ValueError(
            f"{where}.name: model files of {descriptor.name} not found at {xml}: put them there "
            f"(see `edged models`) or set models_dir / ${MODELS_DIR_ENV} to the folder that holds them"
        )
    return xml
