"""The `edged` command: run, check, detect."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn, cast

import cv2

from edged import __version__
from edged.bench import SCENARIOS
from edged.config import Config, load_config
from edged.descriptors import MODELS_DIR_ENV, FileStatus, load_descriptors, verify
from edged.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, EdgedError, ModelError
from edged.frame import Image
from edged.lifecycle import keep_early_hangups
from edged.logs import counted
from edged.models import BUILTIN_DESCRIPTORS, ModelSpec, models_dir, resolve
from edged.redact import REDACTOR
from edged.secrets import MqttSecurity, mqtt_security

log = logging.getLogger("edged")

SEED_MODEL = "models/face-detection-adas-binary-0001/FP32-INT1/face-detection-adas-binary-0001.xml"
UNEXPECTED = "edged failed unexpectedly; please report this with the lines above"


def main(argv: list[str] | None = None) -> int:
    # Until the supervisor installs its own handlers, a SIGTERM (systemd's stop) is a quiet exit 0
    # like Ctrl-C, not a death by signal.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    keep_early_hangups()
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
    except BrokenPipeError:
        # `edged detect ... | head`: the reader has what it wanted. Point stdout at /dev/null so the
        # interpreter's final flush does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception:
        # A bug, not bad input: the traceback is for the developer, redacted like every log line.
        log.exception(UNEXPECTED)
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
    detect.add_argument(
        "-m", "--model", required=True, help="model .xml file, or a descriptor name (see `edged models`)"
    )
    detect.add_argument("--models-dir", type=Path, help="folder of descriptor-named models (default $EDGED_MODELS_DIR)")
    detect.add_argument("--confidence", type=_confidence, help="0 < c <= 1; default: the model descriptor's, else 0.5")
    detect.add_argument("--device", default="CPU", help="OpenVINO device (default CPU)")
    detect.add_argument("images", nargs="+", type=Path)
    detect.set_defaults(handler=_detect)

    models = commands.add_parser("models", help="list the known model descriptors; `models verify DIR` checks files")
    models.set_defaults(handler=_models_list)
    models_commands = models.add_subparsers(dest="models_command")
    verify = models_commands.add_parser("verify", help="check the model files in DIR against the descriptors' sha256")
    verify.add_argument("folder", type=Path, help="folder laid out as <name>/<precision>/<name>.xml (Open Model Zoo)")
    verify.set_defaults(handler=_models_verify)

    shared = Path(os.environ.get("EDGED_TEST_DATA", "../shared"))
    bench = commands.add_parser("bench", help="measure edged end to end against references, in one run")
    bench.add_argument("-m", "--model", type=Path, default=shared / SEED_MODEL, help="model .xml (default: the seed)")
    bench.add_argument("--media", type=Path, default=shared / "media/faces-1080p30.mp4", help="video each camera plays")
    bench.add_argument("--cameras", type=int, default=4, help="cameras (the overload run uses twice as many)")
    bench.add_argument(
        "--seconds", type=float, default=20.0, help="measuring window of each run (overload: at least 60 s)"
    )
    bench.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}")
    bench.add_argument("--no-references", action="store_true", help="skip benchmark_app, ceilings and plain loop")
    bench.add_argument("--mqtt", help="HOST:PORT of a broker to use (default: a private mosquitto)")
    bench.add_argument("--soak", type=float, help="length of the overload run in seconds (RSS growth)")
    bench.add_argument(
        "--requests", type=int, help="edged's inference requests in flight (default: edged's own, see README)"
    )
    bench.add_argument(
        "--repeat", type=int, default=1, help="run it all this many times and add medians (shared machines drift)"
    )
    bench.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    bench.set_defaults(handler=_bench)
    return parser


def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside 0 < confidence <= 1")
    return value


def _validated(path: Path) -> tuple[Config, MqttSecurity]:
    """The config, with every model read and recognised: nothing starts unless all of it is usable."""
    import openvino as ov

    from edged.inference import check_device, read_model

    config = load_config(path)
    security = mqtt_security(config.mqtt, os.environ, path)
    REDACTOR.add_secret(security.password)  # from here on no log line can show it
    core = ov.Core()
    for name, spec in config.model_specs().items():
        try:
            read_model(spec, core)
            check_device(spec, core)
        except ModelError as error:
            raise config.model_error(path, name, error) from None
    return config, security


def _check(args: argparse.Namespace) -> int:
    from edged.sources import probe_file

    config, _ = _validated(args.config)
    # `run` would start the other cameras and report these; a check is asked before anything runs.
    problems = [problem for name, camera in config.cameras.items() if (problem := probe_file(name, camera))]
    if problems:
        raise EdgedError("\n".join(f"{args.config}: {problem}" for problem in problems))
    print(f"{args.config}: OK ({counted(len(config.cameras), 'camera')}, models: {', '.join(config.models)})")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from edged.allocator import tune_allocator
    from edged.supervisor import Supervisor
    from edged.worker import UnwaitedExecutor, busy_workers

    tune_allocator()  # before any frame is allocated: RSS stays flat instead of creeping (edged/allocator.py)
    config, security = _validated(args.config)
    supervisor = Supervisor(config, security, args.config)
    executor = UnwaitedExecutor(thread_name_prefix="edged-io")

    async def serve() -> None:
        asyncio.get_running_loop().set_default_executor(executor)
        await supervisor.run()

    try:
        asyncio.run(serve())
    except (EdgedError, KeyboardInterrupt):
        raise  # unusable input found at start, or a stop before the loop ran: main says so
    except Exception:
        # A bug took the server down with its camera threads and inferences still running: the normal exit
        # would tear the C++ libraries down under them (std::terminate, exit 134 and a core dump).
        log.exception(UNEXPECTED)
        _leave_at_once(EXIT_FAILURE)
    if busy_workers() or executor.busy(timeout=0.2):
        # A camera thread is still blocked inside OpenCV/FFmpeg, or a broker connect inside paho. The normal
        # exit would wait for it, and run the C++ libraries' static destructors under a camera thread's feet
        # (std::terminate, exit 134): leave at once, everything worth keeping (MQTT flush, offline statuses,
        # logs) is done.
        _leave_at_once(supervisor.exit_code)
    return supervisor.exit_code


def _leave_at_once(code: int) -> NoReturn:
    """Exit without the interpreter's teardown, once the logs are out."""
    logging.shutdown()
    with contextlib.suppress(OSError):  # a reader of stdout that went away must not keep edged from leaving
        sys.stdout.flush()
    os._exit(code)


def _detect(args: argparse.Namespace) -> int:
    from edged.inference import Engine
    from edged.message import faces_json

    spec = _model_spec(args)
    missing = [str(path) for path in args.images if not path.is_file()]
    if missing:  # before the model is compiled: that takes a while
        raise EdgedError(f"{', '.join(missing)}: no such image file{'s' * (len(missing) > 1)}: check the path")
    engine = Engine(spec)
    results = []
    for path in args.images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise EdgedError(f"{path}: not a readable image file")
        faces = engine.detect(cast(Image, image))
        height, width = image.shape[:2]
        faces_found = faces_json(faces, width, height)
        results.append(
            {"image": str(path), "width": width, "height": height, "model": engine.name, "faces": faces_found}
        )
    # A JSON array with an image per line: jq reads it whole, a person or grep one image at a time (indenting
    # it put every coordinate on a line of its own).
    print("[\n" + ",\n".join(json.dumps(result) for result in results) + "\n]")
    return EXIT_OK


def _bench(args: argparse.Namespace) -> int:
    from edged.bench.reference import BenchmarkError
    from edged.bench.suite import BenchOptions, BenchReport, format_summary, format_table, repeated_json, run_suite

    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise EdgedError(f"--scenarios: unknown {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    if args.repeat < 1:
        raise EdgedError(f"--repeat: {args.repeat} is not a number of runs: give 1 or more")
    for path, flag in ((args.model, "--model"), (args.media, "--media")):
        if not path.is_file():
            raise EdgedError(f"{flag}: {path} not found (set EDGED_TEST_DATA or pass {flag})")
    mqtt = None
    if args.mqtt:
        host, _, port = args.mqtt.rpartition(":")
        if not host or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise EdgedError(f"--mqtt: {args.mqtt!r} is not HOST:PORT: give the broker as, say, 127.0.0.1:1883")
        mqtt = (host, int(port))
    options = BenchOptions(
        args.model.resolve(), args.media.resolve(), args.cameras, args.seconds, scenarios,
        not args.no_references, mqtt, args.soak, args.requests,
    )  # fmt: skip
    reports: list[BenchReport] = []
    for number in range(1, args.repeat + 1):
        label = f"bench {number}/{args.repeat}" if args.repeat > 1 else "bench"
        try:
            report = run_suite(options, functools.partial(_progress, label))
        except BenchmarkError as error:
            kept = f" (the {len(reports)} done are in {args.json})" if reports and args.json else ""
            raise EdgedError(f"{label}: {error}{kept}") from None
        print(format_table(report), flush=True)  # each run as soon as it is done: a long series shows progress
        reports.append(report)
        if args.json:  # after each: a failure later in a long series keeps what was measured
            args.json.write_text(report.to_json() if args.repeat == 1 else repeated_json(reports))
    if len(reports) > 1:
        print(format_summary(reports))
    return EXIT_OK


def _progress(label: str, step: str) -> None:
    print(f"{label}: {step} ...", file=sys.stderr, flush=True)


def _model_spec(args: argparse.Namespace) -> ModelSpec:
    """`-m` is a path when it names a file, else a descriptor name."""
    given = Path(args.model)
    by_path = given.suffix == ".xml" or given.exists()
    if by_path and not given.is_file():
        raise EdgedError(f"{given}: model file not found: give the model's .xml file or a descriptor name")
    try:
        return resolve(
            given.stem if by_path else args.model,
            path=given if by_path else None,
            name=None if by_path else args.model,
            precision=None,
            device=args.device,
            confidence=args.confidence,
            nms_iou=None,
            resize=None,
            folder=models_dir(args.models_dir),
        )
    except ValueError as error:
        message = str(error).replace(f"models.{args.model}.name", "-m")  # speak of the options, not config keys
        raise EdgedError(message.replace("set models_dir / $", "pass --models-dir or set $")) from None


def _models_list(args: argparse.Namespace) -> int:
    print(f"{'name':34} {'family':6} {'input':9} {'resize':9} {'conf':5} precisions")
    for d in load_descriptors(BUILTIN_DESCRIPTORS).values():
        size = f"{d.input.width}x{d.input.height}"
        print(f"{d.name:34} {d.family:6} {size:9} {d.input.resize:9} {d.confidence:<5} {', '.join(d.precisions)}")
    print(f"\ndescriptors in {BUILTIN_DESCRIPTORS}; model files are looked up in models_dir or ${MODELS_DIR_ENV}")
    return EXIT_OK


def _models_verify(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        raise EdgedError(f"{args.folder}: not a folder: give the folder that holds the model files")
    problems = 0
    present: list[str] = []  # a model's name once per precision found
    for descriptor in load_descriptors(BUILTIN_DESCRIPTORS).values():
        for precision in descriptor.precisions:
            checks = verify(descriptor, args.folder, precision)
            if all(check.status is FileStatus.MISSING for check in checks):
                continue  # this model is simply not in the folder
            present.append(descriptor.name)
            for check in checks:
                print(f"{check.status.value:8} {descriptor.name} {precision} {check.file}")
                problems += check.status is not FileStatus.OK
    if not present:
        raise EdgedError(f"{args.folder}: no known model files found (see `edged models` for the layout)")
    models = counted(len(set(present)), "model")
    print(f"{models} in {counted(len(present), 'precision')} checked, {counted(problems, 'problem')}")
    return EXIT_FAILURE if problems else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
