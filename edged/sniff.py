"""What a media file really holds, told from its first bytes, for error messages that say so.

OpenCV's FFmpeg backend happily opens a PNG as a one-frame "video", and `cv2.imread` just returns
None for an MP4: neither tells the operator that the file is simply of the other kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Kind = Literal["image", "video", "unknown"]

_IMAGE_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"GIF8", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (8, b"WEBP", "WebP"),
)
_VIDEO_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "MP4/MOV"),
    (4, b"moov", "MOV"),
    (4, b"mdat", "MOV"),
    (8, b"AVI ", "AVI"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (0, b"FLV", "FLV"),
    (0, b"\x00\x00\x01\xba", "MPEG-PS"),
    (0, b"\x00\x00\x00\x01", "H.264/H.265 stream"),
)


def sniff(path: Path | str) -> tuple[Kind, str]:
    """("image" | "video" | "unknown", format name) of a file; unreadable files are "unknown"."""
    try:
        with open(path, "rb") as file:
            head = file.read(32)
    except OSError:
        return "unknown", ""
    for offset, magic, name in _IMAGE_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return "image", name
    for offset, magic, name in _VIDEO_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return "video", name
    if head[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6"):
        return "image", "PNM"
    return "unknown", ""
