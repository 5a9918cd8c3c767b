"""edged: cameras -> one OpenVINO AsyncInferQueue -> face detections -> MQTT."""

import os

# OpenCV and FFmpeg print their own warnings straight to stderr, outside logging: an operator would
# see "moov atom not found" next to edged's one-line explanation of the same file (OpenCV even logs
# at ERROR "readHeader IHDR chunk shall be first" for a garbled PNG edged names itself). Both read
# these when cv2 loads, so they are set here, before any module imports cv2; the environment can override.
os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

__version__ = "0.1.0"
