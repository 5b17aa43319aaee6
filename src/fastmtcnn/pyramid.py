"""Pyramid scales, and the fixed-size PNet tiles that hold the levels of any images.

PNet is fully convolutional, so pyramid levels can share an input. Instead of
one canvas per frame size (a new network shape for every new size: a cuDNN
choice, a CUDA graph, an OpenVINO compile), every level of every image is
placed into **tiles** of one fixed size: levels smaller than a tile are packed
together (levels of several images may share a tile), a level larger than a
tile is cut into pieces that overlap by PNet's receptive field. PNet then
only ever sees ``(n, 3, tile, tile)``, whatever the images.

Why a piece is exact, wherever it sits: output cell ``c`` of a PNet input
sees input rows ``[2c, 2c + 12)``. A piece holds the level's rows
``[src_y, src_y + h)`` at an even offset of its tile, so its 2x2 pooling
windows are the level's own; its valid cells are the level's cells
``[src_y/2, src_y/2 + pnet_out(h))``, each of which sees only rows of the
piece. PNet gets a mask added after its first PReLU: outside each piece's
valid conv1 area it holds a value below any real activation, so a ceil-mode
pooling window that hangs over a level's odd edge takes the level's own
values only, exactly as a per-scale run does. A level of ``n`` cells is cut
into pieces of at most ``pnet_out(tile)`` cells, each ``2k + 10`` rows (the
last one ends with the level): pieces overlap by 10 input pixels and their
valid cells tile the level exactly once. So every valid cell equals the
per-scale cell (tests/test_tiles.py checks this cell by cell).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import NamedTuple, Sequence

import numpy as np

from .nets import PNET_MASK_VALUE

CELL = 12  # PNet window side (input pixels)
STRIDE = 2  # PNet output stride
#: default tile side (input pixels, even). The engines' time per pixel is flat from a quarter
#: megapixel up, and smaller tiles waste less at the end of a photo (docs/tiles.md)
TILE = 512
#: open shelves the packer looks back at for room before opening a new one
_LOOKBACK = 8
#: levels up to which the skyline packer is tried too
_SKYLINE_MAX = 48


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


def _even(n: int) -> int:
    return n + (n & 1)


class Piece(NamedTuple):
    """Rows [src_y, src_y+h) x cols [src_x, src_x+w) of level `level` of image `image`, at (y, x) in its canvas.

    A named tuple, not a dataclass: a window of 64 new photo sizes makes ~1000
    of them on the host, 4x faster so."""

    image: int
    level: int
    scale: float
    level_h: int  # the whole level's size: the resampling bins are the level's
    level_w: int
    src_y: int  # even
    src_x: int
    h: int
    w: int
    y: int = 0  # even
    x: int = 0

    @property
    def out_h(self) -> int:
        return pnet_out(self.h)

    @property
    def out_w(self) -> int:
        return pnet_out(self.w)


@dataclass(frozen=True)
class Canvas:
    """One PNet input (a tile, or one level in per-scale mode) and the pieces placed in it."""

    h: int
    w: int
    pieces: tuple[Piece, ...]
    first: int = 0  # index of its first piece in the plan's piece list

    @property
    def out_shape(self) -> tuple[int, int]:
        return pnet_out(self.h), pnet_out(self.w)

    @property
    def mask_shape(self) -> tuple[int, int, int, int]:
        """The shape of `mask()` (the whole canvas), without making it."""
        return 1, 1, self.h - 2, self.w - 2

    def mask(self, rows: tuple[int, int] | None = None) -> np.ndarray:
        """(1, 1, h-2, w-2) float32 added after PReLU1: 0 on each piece's valid conv1 area, PNET_MASK_VALUE
        elsewhere; only conv1 rows [r0, r1) when asked (a band of the canvas)."""
        r0, r1 = rows or (0, self.h - 2)
        m = np.full((1, 1, r1 - r0, self.w - 2), PNET_MASK_VALUE, np.float32)
        for p in self.pieces:
            a, b = max(p.y, r0), min(p.y + p.h - 2, r1)
            if a < b:
                m[..., a - r0:b - r0, p.x:p.x + p.w - 2] = 0.0
        return m

    def cell_piece(self) -> np.ndarray:
        """(out_h, out_w) int32: the plan's index of the piece each valid output cell belongs to, -1 elsewhere."""
        cells = np.full(self.out_shape, -1, np.int32)
        for k, p in enumerate(self.pieces):
            cells[p.y // 2:p.y // 2 + p.out_h, p.x // 2:p.x // 2 + p.out_w] = self.first + k
        return cells


def _shelves(sizes: Sequence[tuple[int, int]], width: int, order: Sequence[int]) -> tuple[list[int], list[int]]:
    """(ys, xs) of the (h, w) rectangles on shelves of a strip `width` wide, placed in `order` (tallest first).

    Why shelves: planning runs for every new batch of photos (hundreds of
    levels), so it must be linear; with the tallest levels first, a shelf holds
    levels of about its own height and wastes little. Plain Python over lists:
    it runs on the host for every level of every new window, while the GPU
    waits for the plan or shares the interpreter with the thread that plans.
    """
    ys, xs = [0] * len(sizes), [0] * len(sizes)
    tops: list[int] = []  # each shelf's y
    fills: list[int] = []  # and the width filled on it
    height, lo, n = 0, 0, 0  # lo: the first of the open shelves looked at; n: shelves
    for i in order:
        h, w = sizes[i]
        room = width - w
        for j in range(lo, n):  # the first open shelf with room
            if fills[j] <= room:
                break
        else:
            j, n = n, n + 1
            tops.append(height)
            fills.append(0)
            height += h
            lo = max(0, n - _LOOKBACK)
        ys[i], xs[i] = tops[j], fills[j]
        fills[j] += w
    return ys, xs


def _skyline(sizes: Sequence[tuple[int, int]], width: int, order: Sequence[int]) -> tuple[list[int], list[int]]:
    """(ys, xs) of the (h, w) rectangles by bottom-left skyline packing in a strip `width` wide, in `order`.

    Tighter than shelves (a short level may sit on a tall one's neighbour) but
    quadratic-ish: used for a photo's own dozen levels, not for big batches.
    """
    sky = [(0, width, 0)]  # segments (x, w, top)
    ys, xs = [0] * len(sizes), [0] * len(sizes)
    for i in order:
        h, w = sizes[i]
        best = None
        for j, (x0, _, _) in enumerate(sky):
            if x0 + w > width:
                break
            top, span, k = 0, 0, j
            while span < w:
                sx, sw, st = sky[k]
                top = max(top, st)
                span += sw - (x0 - sx if k == j else 0)
                k += 1
            if best is None or top < best[0]:
                best = (top, x0)
        y, x = ys[i], xs[i] = best
        new = []
        for sx, sw, st in sky:  # raise [x, x + w) to y + h
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
        sky = []
        for seg in new:
            if sky and sky[-1][2] == seg[2] and sky[-1][0] + sky[-1][1] == seg[0]:
                sky[-1] = (sky[-1][0], sky[-1][1] + seg[1], seg[2])
            else:
                sky.append(seg)
    return ys, xs


def _cover(y: np.ndarray, x: np.ndarray, h: np.ndarray, w: np.ndarray, tile: int, cols):
    """The tile windows of a strip `cols` tiles wide (or one width per rectangle) that each (y, x, h, w)
    rectangle touches: (rectangle index, window row, window col) of every pair, in rectangle order, then
    row, then col. Vectorized: most levels touch one."""
    step = tile - 10
    r0, c0 = y // step, x // step
    nr = np.maximum((y + h - 11) // step - r0 + 1, 0)
    nc = np.maximum(np.minimum(cols - 1, (x + w - 11) // step) - c0 + 1, 0)
    count = nr * nc
    k = np.repeat(np.arange(len(y)), count)
    j = np.arange(len(k)) - np.repeat(np.cumsum(count) - count, count)
    return k, r0[k] + j // nc[k], c0[k] + j % nc[k]


def _layout(sizes: list[tuple[int, int]], tile: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The strip width (in tile columns) that needs the fewest tiles, the levels' places ((2, n): ys, xs)
    and the ids (row * cols + col, sorted) of the tile windows they touch.

    The strip is cut into tiles that overlap by 10 pixels; a few widths are
    tried (narrowest possible, and about as wide as tall, half and twice that):
    wide strips pack small levels better, narrow ones waste less in the last row.
    A photo's own levels are also tried with the skyline packer. The tiles of
    every try are counted in one vectorized pass (numpy's per-call cost would
    otherwise dominate a single photo's plan).
    """
    step = tile - 10
    n = len(sizes)
    hw = np.array(sizes, np.int64).reshape(-1, 2).T
    area = int((hw[0] * hw[1]).sum())
    narrowest = max(1, -(-(int(hw[1].max()) - 10) // step))
    side = area ** 0.5 / step
    packers = (_shelves, _skyline) if n <= _SKYLINE_MAX else (_shelves,)
    order = sorted(range(n), key=lambda i: (-sizes[i][0], -sizes[i][1], i))  # tallest first
    tries = [(cols, packer) for cols in sorted({narrowest, narrowest + 1,
                                                *(max(narrowest, round(side * f)) for f in (0.5, 1, 2))})
             for packer in packers]
    places = np.array([packer(sizes, cols * step + 10, order) for cols, packer in tries], np.int64)  # (t, 2, n)
    width = np.repeat(np.array([cols for cols, _ in tries], np.int64), n)
    k, r, c = _cover(places[:, 0].ravel(), places[:, 1].ravel(), np.tile(hw[0], len(tries)),
                     np.tile(hw[1], len(tries)), tile, width)
    win = r * width[k] + c  # window id on its try's strip
    span = int(win.max()) + 1 if len(win) else 1
    ids = np.unique(k // n * span + win)  # sorted by try, then window
    counts = np.bincount(ids // span, minlength=len(tries))
    best = int(np.argmin(counts))  # the first try of the fewest tiles
    return tries[best][0], places[best], ids[ids // span == best] - best * span


@dataclass(frozen=True)
class Plan:
    """Where every pyramid level of a batch of images goes: canvases of pieces. Pixel-free."""

    sizes: tuple[tuple[int, int], ...]  # (H, W) of each image
    scales: tuple[tuple[float, ...], ...]  # each image's pyramid
    canvases: tuple[Canvas, ...]
    tile: int | None  # tile side, or None: one canvas per level (per-scale)

    @property
    def pieces(self) -> tuple[Piece, ...]:
        return tuple(p for c in self.canvases for p in c.pieces)

    @cached_property
    def levels(self) -> int:
        """Most levels of any image: level ids are image * levels + level (cached: read once per piece)."""
        return max((len(s) for s in self.scales), default=0)

    @property
    def efficiency(self) -> float:
        """Sum of level areas over the canvas area PNet runs on (1.0 = no padding)."""
        used = sum(lh * lw for (h, w), sc in zip(self.sizes, self.scales) for lh, lw in
                   (level_size(h, w, s) for s in sc))
        total = self.pnet_pixels
        return used / total if total else 1.0

    @property
    def pnet_pixels(self) -> int:
        return sum(c.h * c.w for c in self.canvases)

    def groups(self) -> list[list[int]]:
        """Canvas indices in runs of one shape: each run is one PNet call (tiles: all of them)."""
        runs: list[list[int]] = []
        for i, c in enumerate(self.canvases):
            if runs and (self.canvases[runs[-1][0]].h, self.canvases[runs[-1][0]].w) == (c.h, c.w):
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs

    @cached_property
    def tables(self) -> dict[str, np.ndarray]:
        """Per piece, read-only: `canvas`, cell origin `oy`/`ox` (canvas cell of the level's cell 0),
        `image`, `group` (image * levels + level), `scale`; the pieces' rectangles as `rect`
        (canvas, y, x, h, w, src_y, src_x, level_h, level_w) int32, for kernels that build canvases."""
        pieces = self.pieces
        rect = np.array([(k, p.y, p.x, p.h, p.w, p.src_y, p.src_x, p.level_h, p.level_w)
                         for k, c in enumerate(self.canvases) for p in c.pieces], np.int32).reshape(-1, 9)
        t = {
            "rect": rect,
            "canvas": rect[:, 0].astype(np.int64),
            "oy": ((rect[:, 1] - rect[:, 5]) // 2).astype(np.int64),
            "ox": ((rect[:, 2] - rect[:, 6]) // 2).astype(np.int64),
            "image": np.array([p.image for p in pieces], np.int64),
            "group": np.array([p.image * self.levels + p.level for p in pieces], np.int64),
            "scale": np.array([p.scale for p in pieces], np.float32),
        }
        for a in t.values():
            a.setflags(write=False)
        return t

    def describe(self) -> str:
        c = self.canvases
        if self.tile:
            kind = f"{len(c)} tile{'s' if len(c) != 1 else ''} of {self.tile}x{self.tile}"
        else:
            kind = "per scale [" + ", ".join(f"{cv.w}x{cv.h}" for cv in c[:3]) + (" ..." if len(c) > 3 else "") + "]"
        sizes = ", ".join(f"{w}x{h}" for h, w in self.sizes[:3]) + (" ..." if len(self.sizes) > 3 else "")
        return (f"{sizes}: {sum(len(s) for s in self.scales)} levels in {len(self.pieces)} pieces, {kind}, "
                f"packing efficiency {self.efficiency:.3f}")


def make_plan(sizes: Sequence[tuple[int, int]], minsize: float, factor: float,
              tiles: int | Sequence[int] | None = TILE) -> Plan:
    """Plan the pyramids of images of these (H, W) sizes: their levels in tiles, or one canvas per level.

    tiles: the tile side, or several to choose from (the one needing the
    fewest pixels wins); None: per-scale, each level its own canvas.
    Tiles: every level is placed on a strip (`_layout`), the strip is cut
    into tiles overlapping by 10 pixels, and each (level, tile) overlap that
    holds a valid cell becomes a piece.
    """
    sizes = tuple((int(h), int(w)) for h, w in sizes)
    scales = tuple(tuple(pyramid_scales(h, w, minsize, factor)) for h, w in sizes)
    levels = [(i, k, s, *level_size(h, w, s)) for i, ((h, w), sc) in enumerate(zip(sizes, scales))
              for k, s in enumerate(sc)]
    if tiles is None:
        canvases = tuple(Canvas(lh, lw, (Piece(i, k, s, lh, lw, 0, 0, lh, lw),), n)
                         for n, (i, k, s, lh, lw) in enumerate(levels))
        return Plan(sizes, scales, canvases, None)
    if not levels:
        return Plan(sizes, scales, (), int(tiles) if isinstance(tiles, int) else int(tiles[0]))
    rects = [(_even(lh), _even(lw)) for *_, lh, lw in levels]
    best = None
    for tile in ([tiles] if isinstance(tiles, int) else tiles):
        cols, places, used = _layout(rects, int(tile))
        if best is None or len(used) * tile * tile < len(best[3]) * best[0] ** 2:
            best = (int(tile), cols, places, used)
    tile, cols, (y, x), used = best
    # every (level, tile window) overlap, vectorized; those holding a valid cell become pieces
    i, k, s, lh, lw = (np.array(c) for c in zip(*levels))
    n, r, c = _cover(y, x, lh, lw, tile, cols)
    y, x, lh, lw = y[n], x[n], lh[n], lw[n]
    wy, wx = r * (tile - 10), c * (tile - 10)  # the tile's window on the strip
    y0, x0 = np.maximum(y, wy), np.maximum(x, wx)
    ph, pw = np.minimum(y + lh, wy + tile) - y0, np.minimum(x + lw, wx + tile) - x0
    ok = (pnet_out(ph) > 0) & (pnet_out(pw) > 0)
    slot = np.searchsorted(used, r * cols + c)[ok]
    by_tile = np.argsort(slot, kind="stable")  # level order within a tile, as placed
    fields = (i[n], k[n], s[n], lh, lw, y0 - y, x0 - x, ph, pw, y0 - wy, x0 - wx)
    pieces = list(map(Piece._make, zip(*(a[ok][by_tile].tolist() for a in fields))))
    ends = np.cumsum(np.bincount(slot, minlength=len(used)))
    canvases, first = [], 0
    for end in ends.tolist():
        if end > first:
            canvases.append(Canvas(tile, tile, tuple(pieces[first:end]), first))
            first = end
    return Plan(sizes, scales, tuple(canvases), tile)


@lru_cache(maxsize=256)
def image_plan(height: int, width: int, minsize: float, factor: float,
               tiles: int | tuple[int, ...] | None = TILE) -> Plan:
    """`make_plan` of one image, cached per size (the CPU backends plan photo by photo)."""
    return make_plan([(height, width)], minsize, factor, tiles)


def stacked_efficiency(height: int, width: int, minsize: float, factor: float) -> float:
    """Efficiency of the original post's vertical stacking, for comparison."""
    sizes = [level_size(height, width, s) for s in pyramid_scales(height, width, minsize, factor)]
    if not sizes:
        return 1.0
    return sum(h * w for h, w in sizes) / (sum(h for h, _ in sizes) * max(w for _, w in sizes))
