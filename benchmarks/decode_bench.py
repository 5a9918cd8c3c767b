"""Time decoding alone, on real inference outputs: SSH (640x640 input, 16,800 anchors) and SSD.

    python3 benchmarks/decode_bench.py [--repeat 2000]

Decoding runs on OpenVINO's callback threads for every frame, so its cost adds to every
inference; the target for SSH is well under 1 ms per frame. The outputs are computed once
on a real frame and copied out, then decoded `repeat` times; the median is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import openvino as ov

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from edged.decode import Decoder  # noqa: E402
from edged.descriptors import find_descriptor  # noqa: E402

FRAME = "media/faces-1080p30.mp4"  # 1920x1080, two faces: a realistic candidate count


def shared_dir() -> Path:
    configured = Path(os.environ.get("EDGED_TEST_DATA", "../shared"))
    return configured if configured.is_absolute() else (REPO / configured).resolve()


def first_frame(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read()
    capture.release()
    if not ok:
        raise SystemExit(f"cannot read a frame from {path}")
    return frame


def real_outputs(model_name: str, frame: np.ndarray) -> tuple[Decoder, dict[str, np.ndarray]]:
    descriptor = find_descriptor(model_name)
    compiled = ov.Core().compile_model(str(shared_dir() / "models" / descriptor.files().xml.path), "CPU")
    pixels = cv2.resize(frame, (descriptor.input.width, descriptor.input.height))
    result = compiled(pixels.transpose(2, 0, 1)[None].astype(np.float32))
    outputs = {out.get_any_name(): np.array(result[out]) for out in compiled.outputs}
    return descriptor.decoder(), outputs


def median_us(decoder: Decoder, outputs: Mapping[str, np.ndarray], size: tuple[int, int], repeat: int) -> float:
    decoder.decode(outputs, [size])  # warm-up: anchor generation is cached on the first call
    times = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        decoder.decode(outputs, [size])
        times.append(time.perf_counter_ns() - started)
    return statistics.median(times) / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    frame = first_frame(shared_dir() / FRAME)
    size = (frame.shape[1], frame.shape[0])
    for model in ("ssh-contract-retinaface-mnet025", "face-detection-adas-binary-0001"):
        decoder, outputs = real_outputs(model, frame)
        faces = decoder.decode(outputs, [size])[0]
        print(f"{model}: {len(faces)} faces, decode median {median_us(decoder, outputs, size, args.repeat):.1f} us")


if __name__ == "__main__":
    main()
