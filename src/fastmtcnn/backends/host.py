"""What the CPU backends (ONNX Runtime, OpenVINO) share: numpy arrays on the host.

The pipeline's array code runs on numpy; this base class adds the host
versions of its two heavy hooks (`Backend.front` and `Backend.crops`):

* the PNet input is made and run a band of rows at a time
  (`pyramid.pnet_bands`): each band's slice of every pyramid level is
  resampled straight into one reused band buffer (`crop.level_rows`), then
  PNet runs on it. Memory is one band, not a whole canvas, whatever the
  photo's size; bands are exact (see `pnet_bands`).
* RNet/ONet crops come from OpenCV gathers of the integral (`crop.crops_host`).

A subclass runs the nets: `_infer(net, *arrays) -> tuple of arrays` on float32
numpy inputs. Buffers are per thread, so one backend serves several photos
at once (`overlap.overlapped`).
"""
from __future__ import annotations

import threading

import numpy as np

from .. import boxes as bx
from ..crop import crops_host, integral_host, level_rows
from ..nets import PNET_MASK_VALUE
from ..pipeline import NO_TIMER
from ..pyramid import Canvas, Plan, pnet_bands

#: PNet input pixels per band. Measured on a 2-core AMD EPYC (AVX2): both
#: engines keep their small-input time per pixel up to about a million pixels
#: (OpenVINO 53-61 ns/px up to 2.2 MP, 107 ns/px on a whole 10 MP canvas; a 12 MP
#: photo took 941 ms with 1 MP bands, 1043 with 0.5 MP, 964 with 2 MP), and a
#: band's activations stay near 100 MB.
BAND_PIXELS = 1 << 20


class HostBackend:
    """numpy + OpenCV on the host; the nets are a subclass's `_infer`."""

    name = "host"
    canvas = detect_frames = None  # `front` makes the PNet input itself; the shared cascade for the rest
    band_pixels = BAND_PIXELS
    overlap = True  # thread-safe: `MTCNN.detect_batch` runs two images at once

    def __init__(self) -> None:
        self._local = threading.local()

    # ------------------------------------------------------------------ arrays

    def asarray(self, x) -> np.ndarray:
        return np.asarray(x)

    def frames(self, images) -> np.ndarray:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return np.ascontiguousarray(images)
        return np.stack(images)

    def integral(self, frames: np.ndarray) -> np.ndarray:
        return integral_host(frames)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def synchronize(self) -> None:
        pass

    def nms(self, boxes, scores, threshold, groups=None, mode="union", plus_one=False):
        return bx.nms(boxes, scores, threshold, groups, mode, plus_one)

    # ------------------------------------------------------------------ nets

    def _infer(self, net: str, *arrays: np.ndarray) -> tuple:
        raise NotImplementedError

    def pnet(self, x, mask):
        return self._infer("pnet", x, mask)

    def rnet(self, x):
        return self._infer("rnet", x)

    def onet(self, x):
        return self._infer("onet", x)

    # ------------------------------------------------------------------ pipeline hooks

    def crops(self, ii: np.ndarray, frame: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
        return crops_host(ii, frame, windows, size)

    def front(self, frames: np.ndarray, plan: Plan, timer=NO_TIMER):
        """Integral images and PNet's (reg, prob) on each canvas of each frame, made and run band by band."""
        with timer("integral"):
            ii = self.integral(frames)
        n = ii.shape[0]
        maps = [(np.empty((n, 4, *c.out_shape), np.float32), np.empty((n, 1, *c.out_shape), np.float32))
                for c in plan.canvases]
        for f in range(n):
            with timer("integral"):
                ii16 = ii[f].astype(np.uint16)  # the integral modulo 2**16 (crop.level_rows): once per frame
            for canvas, (reg, prob) in zip(plan.canvases, maps):
                for y0, y1 in pnet_bands(canvas.h, canvas.w, self.band_pixels):
                    with timer("pyramid"):
                        x, mask = self._band_input(ii[f], canvas, y0, y1, ii16)
                    with timer("pnet"):
                        r, p = self.pnet(x, mask)
                    a = y0 // 2
                    reg[f, :, a:a + r.shape[2]] = r[0]
                    prob[f, :, a:a + p.shape[2]] = p[0]
        return ii, maps

    def _buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """This thread's PNet band buffer of that shape (the last shape asked for is kept).

        Canvas pixels outside every level keep whatever an earlier band left
        there, always a normalized pixel in [-1, 1] (or the first zeros): the
        mask's bound (`nets.PNET_MASK_VALUE`) holds for any input in that range,
        so they never reach a valid cell and need no clearing.
        """
        buf = getattr(self._local, "band", None)
        if buf is None or buf.shape != shape:
            buf = self._local.band = np.zeros(shape, np.float32)
        return buf

    def _band_input(self, ii: np.ndarray, canvas: Canvas, y0: int, y1: int,
                    ii16: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """PNet input rows [y0, y1) of one frame's canvas (1, 3, y1-y0, w) and the mask rows for it."""
        x = self._buffer((1, 3, y1 - y0, canvas.w))
        for lv in canvas.levels:
            r0, r1 = max(y0, lv.y) - lv.y, min(y1, lv.y + lv.h) - lv.y
            if r0 < r1:
                dst = x[0, :, lv.y + r0 - y0:lv.y + r1 - y0, lv.x:lv.x + lv.w]
                level_rows(ii, lv.h, lv.w, (r0, r1), dst, ii16)
        mask = canvas.mask[:, :, y0:y1 - 2]
        if y1 > canvas.h:  # the last band of an odd height: one zero row, masked (see pnet_bands)
            x[0, :, canvas.h - y0:] = 0.0
            pad = np.full((1, 1, y1 - canvas.h, canvas.w - 2), PNET_MASK_VALUE, np.float32)
            mask = np.concatenate([mask, pad], axis=2)
        return x, mask

