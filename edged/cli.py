"""The `edged` command: run, check, detect."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import cast

import cv2

from edged import __version__
from edged.config import Config, ModelConfig, load_config
from edged.errors import EdgedError
from edged.frame import Image
from edged.redact import REDACTOR
from edged.secrets import MqttSecurity, mqtt_security

log = logging.getLogger("edged")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    # Until the supervisor installs its own handlers, a SIGTERM (systemd's stop) is a quiet exit 0
    # like Ctrl-C, not a death by signal.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args = _parser().parse_args(argv)
    from edged.logs import setup_logging

    setup_logging(args.log_level)
    try:
        code: int = args.handler(args)
        return code
    except EdgedError as error:
        # The message already names the file, key or camera and what to do: no traceback.
        for line in str(error).splitlines():
            print(f"edged: {REDACTOR.redact(line)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        # A bug, not bad input: the traceback is for the developer, redacted like every log line.
        log.exception("edged failed unexpectedly; please report this with the lines above")
        return EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edged", description="Face detection edge server: cameras -> OpenVINO -> MQTT"
    )
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the server")
    run.add_argument("-c", "--config", required=True, type=Path, help="YAML configuration file")
    run.set_defaults(handler=_run)

    check = commands.add_parser("check", help="validate a configuration and its model, then exit")
    check.add_argument("-c", "--config", required=True, type=Path)
    check.set_defaults(handler=_check)

    detect = commands.add_parser("detect", help="detect faces in image files and print JSON (no broker needed)")
    detect.add_argument("-m", "--model", required=True, type=Path, help="model .xml file")
    detect.add_argument("--confidence", type=float, default=0.5)
    detect.add_argument("--device", default="CPU")
    detect.add_argument("images", nargs="+", type=Path)
    detect.set_defaults(handler=_detect)
    return parser


def _validated(path: Path) -> tuple[Config, MqttSecurity]:
    import openvino as ov

    from edged.inference import read_model

    config = load_config(path)
    security = mqtt_security(config.mqtt, os.environ, path)
    REDACTOR.add_secret(security.password)  # from here on no log line can show it
    read_model(config.model, ov.Core())
    return config, security


def _check(args: argparse.Namespace) -> int:
    config, _ = _validated(args.config)
    print(f"{args.config}: OK ({len(config.cameras)} cameras, model {config.model.name})")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from edged.supervisor import Supervisor
    from edged.worker import busy_workers

    config, security = _validated(args.config)
    asyncio.run(Supervisor(config, security, args.config).run())
    if busy_workers():
        # A camera thread is still blocked inside OpenCV/FFmpeg. The normal exit would run the C++
        # libraries' static destructors under its feet (std::terminate, exit 134): leave at once,
        # everything worth keeping (MQTT flush, offline statuses, logs) is done.
        logging.shutdown()
        os._exit(EXIT_OK)
    return EXIT_OK


def _detect(args: argparse.Namespace) -> int:
    from edged.inference import Engine
    from edged.message import faces_json

    model = ModelConfig.model_validate({"path": args.model, "device": args.device, "confidence": args.confidence})
    engine = Engine(model)
    results = []
    for path in args.images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise EdgedError(f"{path}: not a readable image file")
        faces = engine.detect(cast(Image, image))
        height, width = image.shape[:2]
        results.append(
            {
                "image": str(path),
                "width": width,
                "height": height,
                "model": engine.name,
                "faces": faces_json(faces, width, height),
            }
        )
    json.dump(results, sys.stdout, indent=1)
    print()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
