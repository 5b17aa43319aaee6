"""Small test videos written with OpenCV from the photos in ../shared/data (helper, not tests)."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np


def fit(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    """An RGB photo centred on a black w x h frame, shrunk only if it does not fit."""
    s = min(1.0, w / rgb.shape[1], h / rgb.shape[0])
    if s < 1:
        rgb = cv2.resize(rgb, (int(rgb.shape[1] * s), int(rgb.shape[0] * s)), interpolation=cv2.INTER_AREA)
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - rgb.shape[0]) // 2, (w - rgb.shape[1]) // 2
    out[y:y + rgb.shape[0], x:x + rgb.shape[1]] = rgb
    return out


def write_clip(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "FFV1") -> Path:
    """Write RGB frames as a video (FFV1 in .avi is lossless, so decoded frames equal the written ones)."""
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert out.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    for f in frames:
        out.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    out.release()
    return Path(path)


#: photos with one face, one face, no face: a clip cycling through them has faces that come and go
CYCLE = ["skimage_astronaut.png", "skimage_camera.png", "skimage_coffee.png"]


def cycling_clips(data: Path, root: Path) -> tuple[Path, Path]:
    """Two lossless clips of CYCLE's photos: a.avi 10 frames 320x240, b.avi 6 frames 256x192, at 10 fps."""
    from fastmtcnn import read_image

    photos = [read_image(data / n) for n in CYCLE]
    a = write_clip(root / "a.avi", [fit(photos[i % 3], 320, 240) for i in range(10)])
    b = write_clip(root / "b.avi", [fit(photos[i % 3], 256, 192) for i in range(6)])
    return a, b


def read_all(path, limit: int | None = None) -> list[np.ndarray]:
    """Every frame of a video (or the first `limit`), RGB."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while limit is None or len(frames) < limit:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


class MjpegServer:
    """An MJPEG-over-HTTP camera on 127.0.0.1: each connection gets `per_connection` frames, then is cut.

    Stands in for a network camera whose stream drops. After `max_connections`
    it answers 404 (the camera is gone); `stop()` takes it off the network.
    """

    def __init__(self, rgb: np.ndarray, per_connection: int = 10, interval: float = 0.01,
                 max_connections: int | None = None) -> None:
        jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
        part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg) + jpg + b"\r\n"
        self.connections = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.connections += 1
                if max_connections is not None and server.connections > max_connections:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for _ in range(per_connection):
                        self.wfile.write(part)
                        self.wfile.flush()
                        time.sleep(interval)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    """Wait for a thread to reach a state (a condition, not a guess at how long it takes); the timeout only
    turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.005)


#: Debian's Python, which has python3-gi (GStreamer's RTSP server is reached through it, not the venv)
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")


def rtsp_server_missing() -> str | None:
    """Why GStreamer's RTSP server cannot run here (what to install), or None when it can."""
    if not Path(SYSTEM_PYTHON).is_file():
        return f"{SYSTEM_PYTHON} not found (the RTSP server runs on Debian's python3 with python3-gi)"
    p = subprocess.run([SYSTEM_PYTHON, str(RTSP_SERVER), "--check"], capture_output=True, text=True, timeout=120)
    if p.returncode == 0:
        return None
    why = (p.stdout + p.stderr).strip().splitlines()
    return f"GStreamer's RTSP server cannot run: {why[-1] if why else p.returncode} (see .ci/run's apt-get line)"


class RtspServer:
    """GStreamer's RTSP server (tests/rtsp_server.py) on 127.0.0.1, serving a clip's H.264 in real time.

    wait=True starts it loaded but not listening; `listen()` then binds at once (a camera coming back
    on the same address). `kill()` takes it away for good, `pause()` freezes it (a hung camera).
    """

    def __init__(self, clip, port: int = 0, wait: bool = False) -> None:
        cmd = [SYSTEM_PYTHON, str(RTSP_SERVER), str(clip), "--port", str(port)] + (["--wait"] if wait else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = ""
        if wait:
            self._expect("LOADED")
        else:
            self._ready()

    def _expect(self, word: str) -> str:
        line = self.proc.stdout.readline().strip()
        if not line.startswith(word):
            self.kill()
            raise AssertionError(f"RTSP server: expected {word}, got {line or 'nothing (it exited)'}")
        return line

    def _ready(self) -> None:
        self.url = self._expect("READY").split()[1]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    def listen(self) -> None:
        self.proc.stdin.write("listen\n")
        self.proc.stdin.flush()
        self._ready()

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """Gone, sockets closed (safe to call twice, and on a paused server)."""
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a paused (stopped) process too
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()
