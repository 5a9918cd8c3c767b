"""edged: cameras -> one OpenVINO AsyncInferQueue -> face detections -> MQTT."""

__version__ = "0.1.0"
