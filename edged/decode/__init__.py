"""Model outputs -> faces in source-frame pixels, for every supported model family."""

from __future__ import annotations

from edged.decode.base import Decoder, Faces, FrameSize
from edged.decode.family import (
    DecoderSettings,
    ModelOutput,
    UnknownModelFamily,
    describe_outputs,
    family_named,
    family_names,
    recognise_family,
)
from edged.decode.ssh import AnchorConfig

__all__ = [
    "AnchorConfig",
    "Decoder",
    "DecoderSettings",
    "Faces",
    "FrameSize",
    "ModelOutput",
    "UnknownModelFamily",
    "describe_outputs",
    "family_names",
    "make_decoder",
    "recognise_family",
]


def make_decoder(family: str, settings: DecoderSettings) -> Decoder:
    """The decoder of `family` (a name from `recognise_family` or a descriptor)."""
    return family_named(family).build(settings)
