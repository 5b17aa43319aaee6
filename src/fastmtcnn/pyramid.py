"""Pyramid scales and the packed PNet canvas.

PNet is fully convolutional, so every pyramid level can share one input: the
planner packs the levels into one canvas (2D skyline packing, not the
vertical stack of the original post) and PNet runs once per frame.

Why the packed run is *exact*: levels sit at even offsets (so 2x2 pooling
windows line up with each level's own), and PNet gets a mask that is added
after its first PReLU: outside each level's valid conv1 area the mask holds
a value below any real activation, so a ceil-mode pooling window that hangs
over a level's odd edge takes the max of the level's own values only, exactly
as a per-scale run does. Every output cell whose receptive field lies inside
a level is then identical to the per-scale output; no gaps are needed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

from .nets import PNET_MASK_VALUE

CELL = 12  # PNet window side (input pixels)
STRIDE = 2  # PNet output stride


def pyramid_scales(height: int, width: int, minsize: float, factor: float) -> list[float]:
    """Scales of the reference MTCNN, computed the same way (same float steps)."""
    m = 12.0 / minsize
    minl = min(height, width) * m
    scales = []
    scale = m
    while minl >= 12:
        scales.append(scale)
        scale = scale * factor
        minl = minl * factor
    return scales


def level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Resized level size, as the reference computes it."""
    return int(height * scale + 1), int(width * scale + 1)


def pnet_out(n: int) -> int:
    """PNet output cells along a side of n input pixels (conv3, pool2 ceil, conv3, conv3)."""
    return (n - 1) // 2 - 4


@dataclass(frozen=True)
class Level:
    scale: float
    h: int  # level size in pixels
    w: int
    y: int  # offset of the level in its canvas (even)
    x: int

    @property
    def out_h(self) -> int:
        return pnet_out(self.h)

    @property
    def out_w(self) -> int:
        return pnet_out(self.w)


@dataclass(frozen=True)
class Canvas:
    """One PNet input: some levels placed at even offsets, plus what PNet needs to stay exact."""

    h: int
    w: int
    levels: tuple[Level, ...]
    level_ids: tuple[int, ...]  # index of each level in the plan's pyramid
    mask: np.ndarray = field(repr=False)  # (1, 1, h-2, w-2) float32, added after PReLU1
    cell_level: np.ndarray = field(repr=False)  # (out_h, out_w) int32: pyramid level of each valid cell, -1 elsewhere

    @property
    def out_shape(self) -> tuple[int, int]:
        return pnet_out(self.h), pnet_out(self.w)

    @cached_property
    def level_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Per pyramid level id: origin (y, x) in cells (2, L) int64 and scale (L,) float32.

        Read-only, made once per (cached) plan; levels on other canvases get 0 and 1.
        """
        n = max(self.level_ids) + 1
        origins = np.zeros((2, n), np.int64)
        scales = np.ones(n, np.float32)
        for k, lv in zip(self.level_ids, self.levels):
            origins[:, k] = lv.y // 2, lv.x // 2
            scales[k] = lv.scale
        origins.setflags(write=False)
        scales.setflags(write=False)
        return origins, scales


@dataclass(frozen=True)
class Plan:
    """Everything about a frame size that does not depend on pixels; cached per (size, minsize, factor, packed)."""

    height: int
    width: int
    scales: tuple[float, ...]
    canvases: tuple[Canvas, ...]

    @property
    def efficiency(self) -> float:
        """Sum of level areas over the canvas area PNet runs on (1.0 = no padding)."""
        used = sum(lv.h * lv.w for c in self.canvases for lv in c.levels)
        total = sum(c.h * c.w for c in self.canvases)
        return used / total if total else 1.0

    @property
    def pnet_pixels(self) -> int:
        return sum(c.h * c.w for c in self.canvases)

    def describe(self) -> str:
        c = self.canvases
        kind = "packed" if len(c) == 1 and len(self.scales) > 1 else f"{len(c)} canvas(es)"
        shapes = ", ".join(f"{cv.w}x{cv.h}" for cv in c[:3]) + (" ..." if len(c) > 3 else "")
        return (f"{self.width}x{self.height}: {len(self.scales)} levels, {kind} [{shapes}], "
                f"packing efficiency {self.efficiency:.3f}")


def _even(n: int) -> int:
    return n + (n & 1)


def _skyline_pack(sizes: list[tuple[int, int]], width: int) -> tuple[list[tuple[int, int]], int]:
    """Bottom-left skyline packing of (h, w) rectangles into a strip of given width.

    Returns the (y, x) of each rectangle and the strip height. Rectangles must
    have even sizes so that every offset stays even.
    """
    sky = [(0, width, 0)]  # segments (x, w, top)
    places = []
    for h, w in sizes:
        best = None
        for i, (x0, _, _) in enumerate(sky):
            if x0 + w > width:
                break
            top, span, j = 0, 0, i
            while span < w:
                sx, sw, st = sky[j]
                top = max(top, st)
                span += sw - (x0 - sx if j == i else 0)
                j += 1
            if best is None or top < best[0]:
                best = (top, x0)
        assert best is not None, "rectangle wider than strip"
        y, x = best
        places.append((y, x))
        # rebuild the skyline with [x, x+w) raised to y+h
        new = []
        for sx, sw, st in sky:
            ex = sx + sw
            if ex <= x or sx >= x + w:
                new.append((sx, sw, st))
                continue
            if sx < x:
                new.append((sx, x - sx, st))
            if ex > x + w:
                new.append((x + w, ex - (x + w), st))
        new.append((x, w, y + h))
        new.sort()
        merged = []
        for seg in new:
            if merged and merged[-1][2] == seg[2] and merged[-1][0] + merged[-1][1] == seg[0]:
                merged[-1] = (merged[-1][0], merged[-1][1] + seg[1], seg[2])
            else:
                merged.append(seg)
        sky = merged
    height = max(y + h for (y, _), (h, _) in zip(places, sizes))
    return places, height


def pack_levels(sizes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], int, int]:
    """Place level rectangles (h, w) at even offsets in the smallest canvas found.

    Tries strip widths from the widest level up to twice it (the levels after
    the first fit beside it) and keeps the one with the least canvas area.
    """
    even = [(_even(h), _even(w)) for h, w in sizes]
    w0 = max(w for _, w in even)
    candidates = {w0}
    acc = w0
    for _, w in even[1:]:
        acc += w
        candidates.add(acc)
    candidates |= {w0 + 2 * k for k in range(0, w0 // 2 + 1, max(1, w0 // 64))}
    best = None
    for width in sorted(candidates):
        if width > 2 * w0 + 2:
            continue
        places, height = _skyline_pack(even, width)
        used_w = max(x + w for (_, x), (_, w) in zip(places, even))
        area = height * used_w
        if best is None or area < best[0]:
            best = (area, places, height, used_w)
    _, places, height, width = best
    return places, height, width


def _canvas(levels: list[Level], level_ids: list[int], h: int, w: int) -> Canvas:
    mask = np.full((1, 1, h - 2, w - 2), PNET_MASK_VALUE, np.float32)
    oh, ow = pnet_out(h), pnet_out(w)
    cell_level = np.full((oh, ow), -1, np.int32)
    for lv, k in zip(levels, level_ids):
        mask[..., lv.y:lv.y + lv.h - 2, lv.x:lv.x + lv.w - 2] = 0.0
        cy, cx = lv.y // 2, lv.x // 2
        cell_level[cy:cy + lv.out_h, cx:cx + lv.out_w] = k
    mask.setflags(write=False)
    cell_level.setflags(write=False)
    return Canvas(h, w, tuple(levels), tuple(level_ids), mask, cell_level)


@lru_cache(maxsize=64)
def make_plan(height: int, width: int, minsize: float, factor: float, packed: bool = True) -> Plan:
    """Plan the pyramid of a frame size: scales, level sizes and their canvas(es)."""
    scales = pyramid_scales(height, width, minsize, factor)
    sizes = [level_size(height, width, s) for s in scales]
    canvases: list[Canvas] = []
    if packed and sizes:
        places, ch, cw = pack_levels(sizes)
        levels = [Level(s, h, w, y, x) for s, (h, w), (y, x) in zip(scales, sizes, places)]
        canvases.append(_canvas(levels, list(range(len(levels))), ch, cw))
    else:
        for k, (s, (h, w)) in enumerate(zip(scales, sizes)):
            canvases.append(_canvas([Level(s, h, w, 0, 0)], [k], h, w))
    return Plan(height, width, tuple(scales), tuple(canvases))


def pnet_bands(height: int, width: int, max_pixels: int) -> list[tuple[int, int]]:
    """Input rows [y0, y1) that cut a PNet input of height x width into bands of about max_pixels or fewer.

    Why bands: PNet's activations on a whole 12 MP canvas take hundreds of MB
    and spill every cache; bands of a fixed height bound that memory (the
    rule: one band's activations, whatever the photo's size) and keep the
    engine's time per pixel at its small-input rate.

    Why they are exact: band (y0, y1) gives output cells [y0//2, y0//2 + pnet_out(y1 - y0))
    and needs nothing above or below it: cell y sees input rows [2y, 2y+12),
    y0 is even (2x2 pooling windows stay those of the whole input), and every
    band but a lone one has 2k+10 rows, so its pooling windows are all
    whole. All bands have one height (the engine sees one shape): the last
    one starts earlier and repeats a few cells. When height is odd the last
    band ends one row past the input; that row is zero with a masked mask row,
    which is what ceil-mode pooling sees at an odd edge anyway.
    """
    out_h = pnet_out(height)
    rows = max(1, (max_pixels // max(width, 1) - 10) // 2)  # output rows per band
    if out_h <= rows:
        return [(0, height)]
    n = -(-out_h // rows)
    rows = -(-out_h // n)  # spread evenly: n bands of the fewest rows that cover out_h
    starts = [min(i * rows, out_h - rows) for i in range(n)]
    return [(2 * a, 2 * a + 2 * rows + 10) for a in starts]


def stacked_efficiency(height: int, width: int, minsize: float, factor: float) -> float:
    """Efficiency of the original post's vertical stacking, for comparison."""
    sizes = [level_size(height, width, s) for s in pyramid_scales(height, width, minsize, factor)]
    if not sizes:
        return 1.0
    return sum(h * w for h, w in sizes) / (sum(h for h, _ in sizes) * max(w for _, w in sizes))
