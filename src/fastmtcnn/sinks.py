"""Where annotated video frames go: a video file (encoded in a thread of its own) or a window."""
from __future__ import annotations

import os
import queue
import sys
import threading
from pathlib import Path

import cv2
import numpy as np

from .draw import annotate
from .images import host_image

#: FourCC per output extension (what pip's OpenCV FFmpeg build can write)
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


class VideoSink:
    """Draw and encode frames to a file in a background thread (bounded queue: waits rather than grows).

    Frames may be CUDA tensors (NVDEC): the copy to host memory happens here too, off the caller's thread.
    fourcc: the codec (default by extension, `FOURCC`).
    """

    def __init__(self, path: str, fps: float, size: tuple[int, int], fourcc: str | None = None) -> None:
        ext = Path(path).suffix.lower()
        code = fourcc or FOURCC.get(ext, "mp4v")
        if len(code) != 4:
            raise ValueError(f"fourcc must be 4 characters, got {code!r}")
        self.path = path
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*code), fps, size)
        if not self.writer.isOpened():
            raise OSError(f"cannot write {path}: no {code} encoder for '{ext or 'no extension'}' here "
                          f"(try .mp4 or .avi, or fourcc=)")
        self.frames = 0
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="fastmtcnn-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            image, faces, fps, mode = item
            rgb = annotate(host_image(image), faces, fps, mode) if faces is not None else host_image(image)
            self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            self.frames += 1
        self.writer.release()

    def write(self, image, faces=None, fps: float | None = None, mode: str | None = None) -> None:
        """Queue a frame; with faces, it is annotated (`draw.annotate`: boxes, landmarks, FPS, mode) first."""
        self._queue.put((image, faces, fps, mode))

    def close(self) -> None:
        """Encode what is queued and finish the file (safe to call twice)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class Window:
    """An OpenCV window, or a one-line error when there is no display or no GUI support."""

    name = "fastmtcnn"

    def __init__(self) -> None:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise RuntimeError("show= needs a display (DISPLAY is not set); use out= FILE or json= instead")
        try:
            cv2.namedWindow(self.name, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise RuntimeError("show= needs OpenCV with GUI support: pip install opencv-python "
                               "(opencv-python-headless has no windows); or use out= FILE") from None

    def show(self, rgb: np.ndarray) -> bool:
        """Show a frame; False when the user pressed q or Esc, or closed the window."""
        cv2.imshow(self.name, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        try:
            visible = cv2.getWindowProperty(self.name, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            visible = True
        return key not in (ord("q"), 27) and visible

    def close(self) -> None:
        cv2.destroyWindow(self.name)
