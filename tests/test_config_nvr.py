"""The NVR config sections: their defaults, and one line naming the key for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.config import load_config
from edged.errors import ConfigError

SEED = "models/face-detection-adas-binary-0001/FP32-INT1/face-detection-adas-binary-0001.xml"


def write(tmp_path: Path, shared_dir: Path, extra: str) -> Path:
    path = tmp_path / "edged.yaml"
    path.write_text(
        f"model: {{path: {shared_dir / SEED}}}\n"
        f"cameras: {{door: {{url: {shared_dir / 'media/images/astronaut.png'}}}}}\n{extra}"
    )
    return path


def test_defaults_are_what_docs_mqtt_md_promises(tmp_path: Path, shared_dir: Path) -> None:
    config = load_config(write(tmp_path, shared_dir, ""))
    assert (config.events.enabled, config.events.min_frames, config.events.end_after) == (True, 2, 2.0)
    assert (config.snapshots.enabled, config.snapshots.crop, config.snapshots.height, config.snapshots.quality) == (
        True,
        False,
        270,
        70,
    )
    assert (config.stats.enabled, config.stats.interval) == (True, 30.0)
    assert (config.metrics.port, config.metrics.host) == (None, "127.0.0.1")
    assert (config.homeassistant.enabled, config.homeassistant.discovery_prefix) == (False, "homeassistant")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("events: {min_frame: 2}", "events.min_frame: unknown key"),
        ("events: {end_after: 0}", "events.end_after: Input should be greater than 0 (got 0)"),
        ("snapshots: {height: 0}", "snapshots.height: Input should be greater than or equal to 16 (got 0)"),
        ("snapshots: {quality: 101}", "snapshots.quality: Input should be less than or equal to 100 (got 101)"),
        ("stats: {interval: 0.1}", "stats.interval: Input should be greater than or equal to 1 (got 0.1)"),
        ("metrics: {port: 70000}", "metrics.port: Input should be less than or equal to 65535 (got 70000)"),
        (
            "homeassistant: {discovery_prefix: 'ha/#'}",
            "homeassistant.discovery_prefix: must be a plain MQTT topic without wildcards",
        ),
    ],
)
def test_a_mistake_in_a_section_is_one_line_naming_the_key(
    tmp_path: Path, shared_dir: Path, extra: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, shared_dir, extra))
    [line] = str(error.value).splitlines()
    assert line.startswith(f"{tmp_path / 'edged.yaml'}: ")
    assert expected in line
