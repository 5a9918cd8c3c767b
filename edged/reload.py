"""SIGHUP: what a new configuration changes, decided before anything is touched.

Only cameras are reloaded live. A changed `mqtt` or `model` section needs a restart (a new
broker session or a recompiled model would interrupt every camera anyway); the reload says so
in the log and keeps running with the settings it has.
"""

from __future__ import annotations

from dataclasses import dataclass

from edged.config import Config


@dataclass(frozen=True, slots=True)
class CameraChanges:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    needs_restart: tuple[str, ...]  # top-level sections that differ but are not reloaded live

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def summary(self) -> str:
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (("added", self.added), ("removed", self.removed), ("restarted", self.changed))
            if names
        ]
        return "; ".join(parts) or "no camera changed"


def diff(old: Config, new: Config) -> CameraChanges:
    before, after = old.cameras, new.cameras
    return CameraChanges(
        added=tuple(name for name in after if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(name for name in after if name in before and after[name] != before[name]),
        unchanged=tuple(name for name in after if name in before and after[name] == before[name]),
        needs_restart=tuple(
            key for key in Config.model_fields if key != "cameras" and getattr(old, key) != getattr(new, key)
        ),
    )
