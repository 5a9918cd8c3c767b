"""Model descriptors: what edged knows about each supported model, one YAML file per model.

A descriptor holds the model's contract (input, outputs, decoder family and its
parameters), where its files sit under a weights folder laid out as Open Model Zoo does
(`<name>/<precision>/<name>.xml`), their sha256, the licence and how to obtain them.
Weights are never in the repository; `verify` checks a user's copy against the digests.
"""

from __future__ import annotations

import hashlib
import os
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edged.decode import (
    AnchorConfig,
    Decoder,
    DecoderSettings,
    family_names,
    make_decoder,
    recognise_family,
)
from edged.errors import EdgedError

MODELS_DIR_ENV = "EDGED_MODELS_DIR"

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Triple = tuple[float, float, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileRef(_Strict):
    path: str  # relative to the weights folder, "/"-separated
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

    @field_validator("path")
    @classmethod
    def _stays_inside(cls, path: str) -> str:
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts or "\\" in path:
            raise ValueError(f"{path!r}: must be a relative '/'-separated path inside the weights folder")
        return path


class ModelFiles(_Strict):
    xml: FileRef
    bin: FileRef

    def all(self) -> tuple[FileRef, FileRef]:
        return (self.xml, self.bin)


class InputSpec(_Strict):
    name: str
    width: Annotated[int, Field(gt=0)]
    height: Annotated[int, Field(gt=0)]
    colour_order: Literal["BGR", "RGB"]
    # Applied as (pixel - mean) / scale per channel, in colour_order; 0 and 1 when the
    # graph takes raw 0..255 pixels (normalisation folded into the model).
    mean: Triple
    scale: Triple
    layout: Literal["NCHW", "NHWC"]
    # stretch: the whole frame resized to the input, as the reference pipelines do; letterbox:
    # aspect kept, padded at the bottom/right (measured: the SSH-contract model misses half the
    # faces of 16:9 frames when they are stretched onto its square input).
    resize: Literal["stretch", "letterbox"] = "stretch"


class AnchorSpec(_Strict):
    base_size: Annotated[int, Field(gt=0)]
    ratios: tuple[float, ...]
    scales: dict[int, tuple[float, ...]]  # stride -> scales, in the order outputs are read

    def config(self) -> AnchorConfig:
        return AnchorConfig(self.base_size, self.ratios, tuple(self.scales.items()))


class Descriptor(_Strict):
    name: str
    description: str
    family: str
    input: InputSpec
    outputs: dict[str, tuple[int, ...]]  # name -> shape, as the model declares them
    anchors: AnchorSpec | None = None
    confidence: Probability
    nms_iou: Probability | None = None
    precisions: Annotated[dict[str, ModelFiles], Field(min_length=1)]
    licence: str
    obtain: str

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        if family not in family_names():
            raise ValueError(f"unknown family {family!r}; supported: {', '.join(family_names())}")
        return family

    @model_validator(mode="after")
    def _outputs_fit_the_family(self) -> Descriptor:
        found = recognise_family(list(self.outputs.items()))
        if found != self.family:
            raise ValueError(f"its outputs are those of the {found} family, not {self.family}")
        return self

    @property
    def default_precision(self) -> str:
        return next(iter(self.precisions))

    def files(self, precision: str | None = None) -> ModelFiles:
        chosen = precision or self.default_precision
        try:
            return self.precisions[chosen]
        except KeyError:
            raise KeyError(f"{self.name} has no precision {chosen!r}; it has {', '.join(self.precisions)}") from None

    def decoder(self, confidence: float | None = None) -> Decoder:
        """This model's decoder, at the descriptor's confidence unless one is given."""
        settings = DecoderSettings(
            input_size=(self.input.width, self.input.height),
            confidence=self.confidence if confidence is None else confidence,
            output_names=tuple(self.outputs),
            nms_iou=self.nms_iou,
            anchors=self.anchors.config() if self.anchors else None,
        )
        return make_decoder(self.family, settings)


class DescriptorError(EdgedError, ValueError):
    """A descriptor file that cannot be used; the message names the file."""


def default_models_dir() -> Path:
    """$EDGED_MODELS_DIR, else the repository's `models/` next to the `edged` package."""
    configured = os.environ.get(MODELS_DIR_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parent.parent / "models"


def load_descriptor(path: Path) -> Descriptor:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        descriptor = Descriptor.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise DescriptorError(f"{path}: {exc}") from exc
    except UnicodeDecodeError:
        raise DescriptorError(f"{path}: not UTF-8 text: not a descriptor") from None
    except OSError as error:  # one unreadable file is that file's problem, not the folder's
        raise DescriptorError(f"{path}: cannot be read ({error.strerror or type(error).__name__})") from None
    if descriptor.name != path.stem:
        # One name, one file: lets find_descriptor and humans locate it without loading all.
        raise DescriptorError(f"{path}: name {descriptor.name!r} differs from the file name")
    return descriptor


def load_descriptors(models_dir: Path | None = None) -> dict[str, Descriptor]:
    folder = models_dir or default_models_dir()
    if not folder.is_dir():
        raise DescriptorError(f"no descriptor folder at {folder} (set {MODELS_DIR_ENV} to the folder of *.yaml)")
    return {d.name: d for d in map(load_descriptor, sorted(folder.glob("*.yaml")))}


def find_descriptor(name: str, models_dir: Path | None = None) -> Descriptor:
    folder = models_dir or default_models_dir()
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
        raise LookupError(f"no descriptor for model {name!r} in {folder}; known: {known}")
    return load_descriptor(path)


class FileStatus(StrEnum):
    OK = "ok"
    MISSING = "missing"
    MISMATCH = "mismatch"


class FileCheck(NamedTuple):
    file: Path
    status: FileStatus


def sha256_of(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()  # reads in chunks


def verify(descriptor: Descriptor, weights_dir: Path, precision: str | None = None) -> list[FileCheck]:
    """Check the files of one precision (all precisions when None) under `weights_dir`."""
    chosen = [descriptor.files(precision)] if precision else list(descriptor.precisions.values())
    checks = []
    for ref in (ref for files in chosen for ref in files.all()):
        path = weights_dir / ref.path
        if not path.is_file():
            status = FileStatus.MISSING
        elif sha256_of(path) != ref.sha256:
            status = FileStatus.MISMATCH
        else:
            status = FileStatus.OK
        checks.append(FileCheck(path, status))
    return checks
