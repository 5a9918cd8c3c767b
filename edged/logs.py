"""Logging for an operator: one line per state change, to stderr, credentials redacted."""

from __future__ import annotations

import logging
import sys

from edged.redact import REDACTOR

MQTT_CLIENT_LOGGER = "edged.mqtt.client"  # aiomqtt's and paho's lines, through edged's MQTT client


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # Under systemd the journal adds its own timestamp; elsewhere the time helps. Keep both short.
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(REDACTOR)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (paho's per-packet debug lines) is not what an operator needs at 3 a.m.
    for noisy in ("aiomqtt", "paho", "mqtt", MQTT_CLIENT_LOGGER):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))


def counted(number: int, noun: str) -> str:
    """`1 camera`, `2 cameras`: log lines are read by people."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
