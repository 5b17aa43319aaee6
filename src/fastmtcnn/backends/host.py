"""What the CPU backends (ONNX Runtime, OpenVINO) share: numpy arrays on the host.

The pipeline's array code runs on numpy; this base class adds the host
versions of its two heavy hooks (`Backend.front` and `Backend.crops`):

* PNet runs tile by tile (`pyramid.make_plan`): each piece of a pyramid
  level is resampled straight into one reused tile buffer (`crop.level_rows`),
  then PNet runs on it. Memory is one tile, not a whole pyramid, whatever
  the photo's size, and the engine only ever sees a few input shapes (one
  per tile side), so OpenVINO compiles PNet a few times per machine, not per
  photo size.
* RNet/ONet crops come from OpenCV gathers of the integral (`crop.crops_host`).

A subclass runs the nets: `_infer(net, *arrays) -> tuple of arrays` on float32
numpy inputs. Buffers are per thread, so one backend serves several photos
at once (`overlap.overlapped`).
"""
from __future__ import annotations

import threading

import numpy as np

from .. import boxes as bx
from ..crop import Integrals, crops_host, integrals_host, level_rows
from ..pipeline import NO_TIMER, cell_candidates
from ..pyramid import Canvas, Plan

#: PNet tile sides a photo's plan chooses from (the fewest pixels wins): three shapes for the engines.
#: Measured on a 2-core AMD EPYC (AVX2): both engines keep their small-input time per pixel from a
#: quarter megapixel up (OpenVINO 53-61 ns/px up to 2.2 MP), and a photo's pyramid fills these tiles
#: to 0.72-0.85 (one size would leave 0.43-0.72 for some photos).
HOST_TILES = (256, 384, 512)


class HostBackend:
    """numpy + OpenCV on the host; the nets are a subclass's `_infer`."""

    name = "host"
    canvas = submit_images = None  # `front` makes the PNet input itself; the shared cascade for the rest
    tiles = HOST_TILES
    overlap = True  # thread-safe: `MTCNN.detect_batch` runs two images at once
    #: PNet inputs `_stream` may still be reading when it asks for the next one (tiles take that many + 1
    #: buffers in turn); 0: one call at a time
    held = 0

    def __init__(self) -> None:
        self._local = threading.local()

    # ------------------------------------------------------------------ arrays

    def asarray(self, x) -> np.ndarray:
        return np.asarray(x)

    def images(self, images) -> list[np.ndarray]:
        return [np.ascontiguousarray(im) for im in images]

    def integrals(self, images) -> Integrals:
        return integrals_host(images)

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
        """PNet on (N, 3, h, w) with one mask, or one mask per canvas ((N, 1, h-2, w-2): one call each,
        the shipped graph takes one)."""
        if mask.shape[0] == 1:
            return self._infer("pnet", x, mask)
        outs = [self._infer("pnet", x[i:i + 1], mask[i:i + 1]) for i in range(x.shape[0])]
        return tuple(np.concatenate(o) for o in zip(*outs))

    def rnet(self, x):
        return self._infer("rnet", x)

    def onet(self, x):
        return self._infer("onet", x)

    # ------------------------------------------------------------------ pipeline hooks

    def crops(self, ii: Integrals, frame: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
        return crops_host(ii, frame, windows, size)

    def front(self, images: list[np.ndarray], plan: Plan, threshold: float, timer=NO_TIMER):
        """Integral images and PNet's cells over `threshold` (`pipeline.cell_candidates`), tile by tile.

        Each tile's outputs are reduced to its cells over the threshold as soon
        as they come: what a photo keeps of PNet is its candidates, not its maps
        (a 48 MP photo's maps would be ~190 MB).
        """
        with timer("integral"):
            ii = self.integrals(images)
        hits = []  # per tile with cells over the threshold: (piece, cy, cx, score, reg (k, 4))
        for k, reg, prob in self.pnet_tiles(ii, plan, timer):
            with timer("candidates"):
                face = prob[0, -1]
                cy, cx = np.nonzero(face >= threshold)
                if cy.size:
                    piece = plan.canvases[k].cell_piece()[cy, cx]
                    ok = piece >= 0
                    cy, cx, piece = cy[ok], cx[ok], piece[ok]
                    hits.append((piece, cy, cx, face[cy, cx], reg[0][:, cy, cx].T))
        if not hits:
            return ii, []
        with timer("candidates"):
            p, cy, cx, score, r = (np.concatenate([h[i] for h in hits]) for i in range(5))
            return ii, [cell_candidates(self, plan, p.astype(np.int64), cy, cx, score, r)]

    def pnet_tiles(self, ii: Integrals, plan: Plan, timer=NO_TIMER):
        """(tile index, reg, prob) of each tile of the plan, in order: each piece of a pyramid level made
        into a reused tile buffer (`crop.level_rows`), PNet run on it (`_stream`)."""

        def tiles():
            for k, canvas in enumerate(plan.canvases):
                with timer("pyramid"):
                    x, mask = self._tile(ii, canvas, k % (self.held + 1)), canvas.mask()
                yield x, mask

        for k, (reg, prob) in enumerate(self._stream("pnet", tiles(), timer)):
            yield k, reg, prob

    def _stream(self, net: str, inputs, timer=NO_TIMER):
        """`net`'s outputs for each input tuple, in order. An engine that runs several at once overrides it;
        it may still read an input's arrays until `held` more inputs have been asked for."""
        for arrays in inputs:
            with timer(net):
                out = self._infer(net, *arrays)
            yield out

    def _tile(self, ii: Integrals, canvas: Canvas, slot: int = 0) -> np.ndarray:
        """The canvas's PNet input (1, 3, h, w) in this thread's reused buffer `slot` (of `held` + 1).

        Pixels outside every piece keep whatever an earlier tile left there,
        always a normalized pixel in [-1, 1] (or the first zeros): the mask's
        bound (`nets.PNET_MASK_VALUE`) holds for any input in that range, so
        they never reach a valid cell and need no clearing.
        """
        shape = (1, 3, canvas.h, canvas.w)
        ring = getattr(self._local, "tiles", None)
        if ring is None or ring[0].shape != shape:
            ring = self._local.tiles = [np.zeros(shape, np.float32) for _ in range(self.held + 1)]
        x = ring[slot]
        for p in canvas.pieces:
            level_rows(ii.image(p.image), p.level_h, p.level_w, (p.src_y, p.src_y + p.h),
                       x[0, :, p.y:p.y + p.h, p.x:p.x + p.w], (p.src_x, p.src_x + p.w))
        return x
