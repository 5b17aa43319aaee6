"""Small test videos written with OpenCV from the photos in ../shared/data (helper, not tests)."""
from __future__ import annotations

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
