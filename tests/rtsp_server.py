"""A real RTSP server for the tests: GStreamer's gst-rtsp-server on 127.0.0.1, serving an MP4 as is.

Run with Debian's /usr/bin/python3 (python3-gi and gir1.2-gst-rtsp-server-1.0 are Debian packages, not
in the project's venv):

    /usr/bin/python3 tests/rtsp_server.py CLIP.mp4 [--port N] [--wait]
    /usr/bin/python3 tests/rtsp_server.py --check    # exit 0 (prints OK) when all it needs is installed

The clip's H.264 is not re-encoded (qtdemux ! h264parse ! rtph264pay), so a client decodes the same
frames as from the file; the server's sinks pace the packets by their timestamps, so the stream runs in
real time, like a camera. Each client gets its own session from the clip's first frame; at the clip's
end the session ends (EOS), as when a camera stops sending.

It prints `READY rtsp://127.0.0.1:PORT/live` once it listens (tests wait for that line, not for a
time). With --wait it first loads GStreamer and prints `LOADED`, then binds only when a line arrives on
stdin: a restarted server that comes up at once (the tests' reconnect case). It runs until killed.
"""
from __future__ import annotations

import argparse
import sys
import threading

#: the elements the served pipeline needs, and the Debian package of each
ELEMENTS = {"filesrc": "gstreamer1.0-plugins-base", "qtdemux": "gstreamer1.0-plugins-good",
            "h264parse": "gstreamer1.0-plugins-bad", "rtph264pay": "gstreamer1.0-plugins-good",
            "appsink": "gstreamer1.0-plugins-base"}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("clip", nargs="?")
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--wait", action="store_true", help="bind only after a line on stdin")
    p.add_argument("--check", action="store_true", help="only check that everything needed is installed")
    args = p.parse_args()

    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as e:
        print(f"ERROR {e} (Debian: python3-gi gir1.2-gst-rtsp-server-1.0)", flush=True)
        return 1
    Gst.init(None)
    missing = [f"{e} ({pkg})" for e, pkg in ELEMENTS.items() if Gst.ElementFactory.find(e) is None]
    if missing:
        print(f"ERROR GStreamer elements missing: {', '.join(missing)}", flush=True)
        return 1
    if args.check or not args.clip:
        print("OK" if args.check else "ERROR no clip given", flush=True)
        return 0 if args.check else 1
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    clip = args.clip.replace("\\", "\\\\").replace('"', '\\"')
    factory.set_launch(f'( filesrc location="{clip}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 )')
    factory.set_shared(False)  # each client its own session, from the first frame
    server.get_mount_points().add_factory("/live", factory)
    if args.wait:
        print("LOADED", flush=True)
        sys.stdin.readline()
    loop = GLib.MainLoop()
    try:
        server.attach(None)
    except GLib.Error as e:
        print(f"ERROR cannot listen on 127.0.0.1:{args.port}: {e.message}", flush=True)
        return 1
    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}/live", flush=True)
    # stdin closed (the test process is gone): stop too, so no server outlives its test
    threading.Thread(target=lambda: (sys.stdin.read(), loop.quit()), daemon=True).start()
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
