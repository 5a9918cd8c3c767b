#!/usr/bin/python3
"""A real RTSP server for tests, built on GStreamer's gst-rtsp-server.

Run by the SYSTEM python (/usr/bin/python3), which has python3-gi; the project's own python does
not. It serves one media file's H.264 track at ``/stream`` (or ``--mount``) WITHOUT re-encoding:
x264 at 1080p is far too slow on a 2-core CI machine, while demux + parse + payload costs almost
nothing. The server paces RTP by the file's timestamps, so clients see the file's real frame rate.

Protocol with the parent (tests/support/rtsp.py): once listening, it prints one line
``READY <port>`` on stdout and flushes. With ``--port 0`` the kernel picks the port, which avoids
the race of "find a free port, then bind it"; a restart passes the port it got the first time.
SIGTERM / SIGINT stop it cleanly; the tests also SIGKILL it to simulate a camera dying.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

import gi  # type: ignore[import-not-found,import-untyped,unused-ignore]

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # type: ignore[import-not-found,unused-ignore]  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--file", required=True, type=Path, help="MP4 (or MOV) file with an H.264 track")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 lets the kernel choose")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mount", default="/stream")
    parser.add_argument(
        "--loop",
        action="store_true",
        help="repeat the file forever (the H.264 track is extracted to a raw byte stream first)",
    )
    return parser.parse_args(argv)


def extract_byte_stream(source: Path, target: Path) -> None:
    """Copy the file's H.264 track to an Annex-B elementary stream, without decoding.

    Looping an MP4 inside an RTSP media pipeline needs segment seeks on a bus the RTSP server
    owns; a raw elementary stream can instead be re-read endlessly by ``multifilesrc loop=true``.
    """
    pipeline = Gst.parse_launch(
        f'filesrc location="{source}" ! qtdemux ! h264parse '
        "! video/x-h264,stream-format=byte-stream,alignment=au "
        f'! filesink location="{target}"'
    )
    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    message = bus.timed_pop_filtered(30 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if message is None or message.type != Gst.MessageType.EOS:
        detail = message.parse_error()[0].message if message is not None else "timeout"
        raise RuntimeError(f"cannot extract H.264 from {source}: {detail}")


def probe_framerate(source: Path) -> str:
    """The track's frame rate as a GStreamer fraction string, e.g. ``30/1``."""
    pipeline = Gst.parse_launch(f'filesrc location="{source}" ! qtdemux ! h264parse name=parse ! fakesink')
    pipeline.set_state(Gst.State.PAUSED)
    pipeline.get_state(10 * Gst.SECOND)
    caps = pipeline.get_by_name("parse").get_static_pad("src").get_current_caps()
    pipeline.set_state(Gst.State.NULL)
    if caps is None:
        raise RuntimeError(f"no H.264 track in {source}")
    ok, num, den = caps.get_structure(0).get_fraction("framerate")
    return f"{num}/{den}" if ok and num > 0 else "30/1"


def launch_line(source: Path, loop: bool, workdir: Path) -> str:
    if not loop:
        return f'( filesrc location="{source}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )'
    elementary = workdir / "track.h264"
    extract_byte_stream(source, elementary)
    rate = probe_framerate(source)
    # h264parse re-times the raw stream from the caps' frame rate (DTS only, continuous across
    # loops); copy_dts_to_pts() then gives the payloader and the sinks a timestamp to pace by.
    return (
        f'( multifilesrc location="{elementary}" loop=true '
        f'caps="video/x-h264,stream-format=byte-stream,alignment=au,framerate={rate}" '
        f"! h264parse name={RETIMED_PARSER} ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


RETIMED_PARSER = "retimed"


def copy_dts_to_pts(_pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
    """Set PTS = DTS on a buffer that has no PTS.

    With B-frames this makes the RTP timestamps follow decode order instead of display order, off
    by a frame or two; decoders reorder by picture order count anyway, so clients see every frame
    in the right order at the right rate. Good enough for a test camera.
    """
    buffer = info.get_buffer()
    if buffer is not None and buffer.pts == Gst.CLOCK_TIME_NONE:
        buffer.pts = buffer.dts
    return Gst.PadProbeReturn.OK


def on_media_configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
    parser = media.get_element().get_by_name(RETIMED_PARSER)
    if parser is not None:
        parser.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, copy_dts_to_pts)


def serve(args: argparse.Namespace, workdir: Path) -> int:
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.file.resolve(), args.loop, workdir))
    # Not shared: every client gets its own pipeline that starts at the file's first key frame,
    # so a reconnecting client never waits for the next IDR.
    factory.set_shared(False)
    factory.connect("media-configure", on_media_configure)

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"ERROR cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        return 2

    main_loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, _quit, main_loop)
    print(f"READY {server.get_bound_port()}", flush=True)
    main_loop.run()
    return 0


def _quit(main_loop: GLib.MainLoop) -> bool:
    main_loop.quit()
    return GLib.SOURCE_REMOVE  # type: ignore[no-any-return,unused-ignore]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.file.is_file():
        print(f"ERROR no such file: {args.file}", file=sys.stderr, flush=True)
        return 2
    Gst.init(None)
    with tempfile.TemporaryDirectory(prefix="edged-rtsp-") as workdir:
        return serve(args, Path(workdir))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
