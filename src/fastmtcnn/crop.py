"""Area resampling of image windows through an integral image.

The reference resizes with torch's "area" interpolation, which is adaptive
average pooling: output pixel i averages input rows
[floor(i*n/m), ceil((i+1)*n/m)) (`area_bins`, the one definition of those
bins here), equal weights, neighbouring bins overlapping by a pixel. With an
integral image (`integral_image`, the one definition of it) every such mean
is four lookups, so all pyramid levels and all RNet/ONet crops of a batch
come from one integral image per frame, with no per-box Python loop.

Why the values equal the reference's: the integral holds exact integer sums
(int32; past 2**31 it wraps, and differences of wrapped sums are still exact
while a bin's sum stays below 2**31), so a bin's sum is the exact integer the
reference accumulates in float32; it is converted to float32 (exact below
2**24, i.e. any bin of < 65793 pixels), divided by the bin's pixel count in
float32 (one correctly rounded division, as the reference's mean), then
(x - 127.5) * 2**-7 in float32, the reference's own two steps. The result is
bit for bit the reference's input for bins below 2**24, and within a float32
rounding of it above.

Images of any sizes share one batch: their integral images sit in one flat
buffer (`Integrals`), rows of C sums, each image from its own offset.

Two implementations of those numbers:

* `area_resize` and `resize_region`: array-API code, one gather of all
  corners, for numpy and torch alike (the torch backend's reference path).
* `level_rows` and `crops_host`: the CPU backends' path, numpy + OpenCV on
  the host (`cv2.integral` for the integral image). Every gather is a
  contiguous row copy or a flat int32 `np.take(..., mode="clip")` (numpy's
  unbuffered fast path), channels are written straight into the planar
  network input, and pyramid levels are made a piece at a time, so the
  working set is one tile. Same integer sums, same float32 steps: the
  tests check them against `area_resize`/`resize_region` and torch.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .namespace import array_namespace

MEAN = 127.5
SCALE = 0.0078125  # 1/128: the nets' input normalization


def integral_image(images):
    """(N, H, W, C) uint8 -> (N, H+1, W+1, C) int32 inclusive prefix sums with a zero border.

    The scans run in int32 (`dtype`): by default an integer scan widens to
    int64, twice the bytes for the same integers once cast back (int32 wraps
    past 2**31 either way, and box sums, differences of four, come out right
    while the box's own sum fits). Measured on 2 CPU cores: 8 photos of
    1024x1000 390 vs 600 ms with torch, 510 vs 650 with numpy; on a GPU the
    int64 scans were 15% of the torch-op path's time (H100 profile).
    """
    xp = array_namespace(images)
    n, h, w, c = images.shape
    s = xp.cumulative_sum(xp.cumulative_sum(xp.astype(images, xp.int32), axis=1, dtype=xp.int32), axis=2,
                          dtype=xp.int32)
    out = xp.zeros((n, h + 1, w + 1, c), dtype=xp.int32, device=getattr(images, "device", None))
    out[:, 1:, 1:, :] = s
    return out


@dataclass(frozen=True)
class Integrals:
    """Integral images of a batch of images of any sizes, in one buffer.

    flat: (rows, C) int32; image i's (H+1) x (W+1) integral, row-major, from
    row offset[i]. offset, height, width: (n,) int64 arrays where flat lives
    (per-candidate lookups stay on the device); sizes: the (H, W) on the host.
    """

    flat: Any
    offset: Any
    height: Any
    width: Any
    sizes: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.sizes)

    def image(self, i: int):
        """Image i's integral as an (H+1, W+1, C) view."""
        h, w = self.sizes[i]
        start = integral_offsets(self.sizes)[i]
        return self.flat[start:start + (h + 1) * (w + 1)].reshape(h + 1, w + 1, self.flat.shape[1])

    @classmethod
    def of(cls, flat, sizes, xp=None, device=None) -> "Integrals":
        """Wrap a filled buffer: the per-image tables are made from `sizes` where `flat` lives."""
        xp = xp or array_namespace(flat)
        sizes = tuple((int(h), int(w)) for h, w in sizes)
        off = integral_offsets(sizes)[:-1].copy()  # writable: torch.asarray warns on a read-only array
        hw = np.array(sizes, np.int64).reshape(-1, 2)
        kw = {} if device is None else {"device": device}
        return cls(flat, xp.asarray(off, **kw), xp.asarray(hw[:, 0].copy(), **kw),
                   xp.asarray(hw[:, 1].copy(), **kw), sizes)


@lru_cache(maxsize=64)
def integral_offsets(sizes: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Row offset of each (H, W) image's integral in one flat buffer, and the total, (n + 1,) int64.

    Read-only and cached: a tile asks for its pieces' images (`Integrals.image`) once per piece."""
    off = np.concatenate([[0], np.cumsum([(h + 1) * (w + 1) for h, w in sizes], dtype=np.int64)])
    off.setflags(write=False)
    return off


def integrals(images) -> Integrals:
    """`Integrals` of RGB images (a list of (H, W, 3) arrays, or one (N, H, W, 3) array), via `integral_image`."""
    xp = array_namespace(images[0] if isinstance(images, (list, tuple)) else images)
    parts = [xp.reshape(integral_image(im[None, ...]), (-1, im.shape[-1])) for im in images]
    return Integrals.of(xp.concat(parts, axis=0), [tuple(im.shape[:2]) for im in images], xp,
                        getattr(parts[0], "device", None))


def area_bins(xp, start, length, m: int):
    """Adaptive-pooling bins of windows [start, start+length) split into m: (lo, hi), each (n, m).

    Bin i is [start + floor(i*length/m), start + ceil((i+1)*length/m)), exact
    integer maths (torch's adaptive_avg_pool / interpolate(mode="area")).
    xp: the arrays' namespace; start, length: (n,) integer arrays (numpy or torch).
    """
    dev = getattr(start, "device", None)  # numpy < 2 arrays have none, and its arange no device=
    i = (xp.arange(m, dtype=xp.int64) if dev is None else xp.arange(m, dtype=xp.int64, device=dev))[None, :]
    length = length[:, None]
    lo = start[:, None] + (i * length) // m
    hi = start[:, None] + ((i + 1) * length + m - 1) // m
    return lo, hi


def _normalize(xp, total, area):
    """Mean of each bin, then the nets' (x - 127.5) / 128; in place on one float32 buffer."""
    out = xp.astype(total, xp.float32)
    out /= xp.astype(area, xp.float32)
    out -= MEAN
    out *= SCALE
    return out


def area_resize(ii: Integrals, frame, windows, out_h: int, out_w: int):
    """Resize windows of images to out_h x out_w by area averaging, normalized for the nets.

    ii: the images' `Integrals`; frame: (n,) image index of each window;
    windows: (n, 4) int [y0, y1, x0, x1], non-empty and inside the image.
    Returns (n, C, out_h, out_w) float32, already (x - 127.5) / 128.
    """
    xp = array_namespace(ii.flat)
    C = ii.flat.shape[1]
    ys, ye = area_bins(xp, windows[:, 0], windows[:, 1] - windows[:, 0], out_h)
    xs, xe = area_bins(xp, windows[:, 2], windows[:, 3] - windows[:, 2], out_w)
    # one flat gather of the four corners: rows of C sums at (image, y, x); the per-pixel indices in
    # int32 where the buffer allows (half the memory traffic of int64 on a GPU's torch path)
    idx = xp.int32 if ii.flat.shape[0] < 2**31 else xp.int64
    ys, ye, xs, xe = (xp.astype(v, idx) for v in (ys, ye, xs, xe))
    base = xp.astype(xp.take(ii.offset, frame, axis=0), idx)[:, None, None]
    w1 = xp.astype(xp.take(ii.width, frame, axis=0) + 1, idx)[:, None]
    rows = [base + (y * w1)[:, :, None] for y in (ys, ye)]
    corners = [r + x[:, None, :] for r in rows for x in (xs, xe)]  # ss, se, es, ee
    g = xp.take(ii.flat, xp.reshape(xp.stack(corners, axis=0), (-1,)), axis=0)
    g = xp.reshape(g, (4, windows.shape[0], out_h, out_w, C))
    total = g[3] - g[2] - g[1] + g[0]
    area = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :])[..., None]
    return xp.permute_dims(_normalize(xp, total, area), (0, 3, 1, 2))


def resize_region(ii, level_h: int, level_w: int, rows: tuple[int, int], cols: tuple[int, int]):
    """Rows [r0, r1) x cols [c0, c1) of an image resized to level_h x level_w by area averaging, normalized.

    ii: one image's (H+1, W+1, C) integral. The bins are the whole level's
    (a piece of a pyramid level), so the sums separate: two row gathers, then
    two column gathers. Returns (C, r1 - r0, c1 - c0) float32.
    """
    xp = array_namespace(ii)
    H1, W1, C = ii.shape
    dev = getattr(ii, "device", None)
    zero = xp.zeros(1, dtype=xp.int64, device=dev)
    ys, ye = area_bins(xp, zero, xp.asarray([H1 - 1], dtype=xp.int64, device=dev), level_h)
    xs, xe = area_bins(xp, zero, xp.asarray([W1 - 1], dtype=xp.int64, device=dev), level_w)
    (r0, r1), (c0, c1) = rows, cols
    ys, ye, xs, xe = ys[0, r0:r1], ye[0, r0:r1], xs[0, c0:c1], xe[0, c0:c1]
    band = xp.take(ii, ye, axis=0) - xp.take(ii, ys, axis=0)  # (rows, W+1, C)
    total = xp.take(band, xe, axis=1) - xp.take(band, xs, axis=1)  # (rows, cols, C)
    area = ((ye - ys)[:, None] * (xe - xs)[None, :])[:, :, None]
    return xp.permute_dims(_normalize(xp, total, area), (2, 0, 1))


# --------------------------------------------------------------------------- host (numpy + OpenCV)


def integrals_host(images) -> Integrals:
    """`integrals` of (H, W, 3) uint8 numpy images by OpenCV: one SIMD pass per image into one buffer.

    cv2.integral's CV_32S sums are the same integers (wrapping past 2**31 as
    int32 does); checked equal to `integral_image` by the tests.
    """
    import cv2

    sizes = [tuple(im.shape[:2]) for im in images]
    off = integral_offsets(tuple(sizes))
    flat = np.empty((int(off[-1]), 3), np.int32)
    for im, a, (h, w) in zip(images, off, sizes):
        cv2.integral(im, flat[a:a + (h + 1) * (w + 1)].reshape(h + 1, w + 1, 3), sdepth=cv2.CV_32S)
    return Integrals.of(flat, sizes, np)


#: the uint16 half of an int32 that holds its low 16 bits (`level_rows`)
_LOW16 = 0 if sys.byteorder == "little" else 1


@lru_cache(maxsize=512)
def _bins_1d(n: int, m: int, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bins of [0, n) into m as flat offsets into rows of `channels`-interleaved sums, and their lengths.

    Read-only and cached: a plan's levels ask for the same few again and again.
    """
    lo, hi = area_bins(np, np.zeros(1, np.int64), np.array([n], np.int64), m)
    lo, hi = lo[0] * channels, hi[0] * channels
    count = ((hi - lo) // channels).astype(np.float32)
    for a in (lo, hi, count):
        a.setflags(write=False)
    return lo, hi, count


def level_rows(ii: np.ndarray, level_h: int, level_w: int, rows: tuple[int, int], out: np.ndarray,
               cols: tuple[int, int] | None = None, low16: bool = True) -> None:
    """Rows [r0, r1) x cols [c0, c1) of an image's pyramid level (level_h x level_w), normalized, into
    `out` (3, r1-r0, c1-c0) (default: every column).

    ii: one image's integral image (H+1, W+1, 3) int32 (`integrals_host`); out
    may be a strided view (a piece of a PNet tile). The vertical bin sums
    are row segments of the integral (the columns the piece's bins span), the
    horizontal ones flat gathers per channel; then `area_resize`'s float32
    steps, in place on `out`.

    low16: for levels whose bins hold fewer than 2**16 // 255 pixels, read
    the integral modulo 2**16 (the low half of each int32, a view: no copy of
    the integral): differences modulo 2**16 are then the exact sums, and the
    gathers move half the bytes (a 12 MP photo's tiles: 1.3x faster, and
    73 MB less memory than a uint16 copy, 2 cores).
    """
    H1, W1, C = ii.shape
    r0, r1 = rows
    c0, c1 = cols or (0, level_w)
    ys, ye, ny = _bins_1d(H1 - 1, level_h, 1)
    xs, xe, nx = _bins_1d(W1 - 1, level_w, C)
    if low16 and int(ny.max()) * int(nx.max()) * 255 < 1 << 16:
        ii = ii.view(np.uint16)[..., _LOW16::2]
    # only the integral's columns the piece's bins reach: a level cut into tiles reads each row once
    lo, hi = int(xs[c0]), int(xe[c1 - 1]) + C
    xs, xe, nx = xs[c0:c1] - lo, xe[c0:c1] - lo, nx[c0:c1]
    flat = ii.reshape(H1, W1 * C)
    # (k, hi - lo): column prefix sums of each bin row. Advanced indexing with a slice copies row
    # segments; np.take would first copy the whole strided column range
    rsum = flat[ye[r0:r1], lo:hi]
    rsum -= flat[ys[r0:r1], lo:hi]
    total = np.empty((C, r1 - r0, c1 - c0), ii.dtype)
    for c in range(C):
        np.take(rsum, xe + c, axis=1, out=total[c], mode="clip")
        total[c] -= np.take(rsum, xs + c, axis=1, mode="clip")
    np.divide(total, np.multiply.outer(ny[r0:r1], nx), out=out, dtype=np.float32)
    out -= MEAN
    out *= SCALE


#: cv2.remap takes int16 coordinates: images and maps below this on each side
REMAP_LIMIT = 32767


#: output pixels of crops gathered at once by `crops_host` (its working set: 48 bytes each, 12 MB);
#: measured on 2 cores (2071 + 85 crops of a 12 MP photo): 2**15 64 ms, 2**17 45, 2**18 42-45, 2**20 52
CROP_CHUNK = 1 << 18


def crops_host(ii: Integrals, frame: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
    """`area_resize(ii, frame, windows, size, size)` with OpenCV gathers: (n, 3, size, size) float32.

    The four corners of every output pixel's bin are read by cv2.remap with
    nearest-neighbour sampling at integer coordinates, which copies the
    integral's int32 sums as they are (exact by construction: no weights),
    three channels at a time and multi-threaded; then `area_resize`'s integer
    and float32 steps, in place. Crops go in chunks of `CROP_CHUNK` pixels,
    image by image, so the working set stays small whatever their number.
    Images of REMAP_LIMIT pixels or more on a side (past int16 coordinates)
    take `area_resize` itself.
    """
    import cv2

    C = ii.flat.shape[1]
    n = windows.shape[0]
    if n == 0 or max(max(hw) for hw in ii.sizes) + 1 >= REMAP_LIMIT:
        return area_resize(ii, frame, windows, size, size) if n else np.empty((0, C, size, size), np.float32)
    windows = windows.astype(np.int64, copy=False)
    frame = np.asarray(frame)
    order = np.argsort(frame, kind="stable")  # image by image (the cascade's crops already are)
    in_order = bool((order[1:] > order[:-1]).all())
    chunk = max(1, min(CROP_CHUNK // (size * size), (REMAP_LIMIT - 1) // size))  # remap: < 32767 rows
    g = np.empty((4, chunk, size, size, C), np.int32)  # corners ee, es, se, ss
    maps = np.empty((chunk, size, size, 2), np.int16)  # (x, y) of each output pixel's corner
    out = np.empty((n, C, size, size), np.float32)
    for a in range(0, n, chunk):
        sel = order[a:a + chunk]
        k = len(sel)
        f = frame[sel]
        runs = np.flatnonzero(np.r_[True, f[1:] != f[:-1], True])  # crops of one image: [runs[i], runs[i+1])
        w = windows[sel]
        ys, ye = area_bins(np, w[:, 0], w[:, 1] - w[:, 0], size)
        xs, xe = area_bins(np, w[:, 2], w[:, 3] - w[:, 2], size)
        for c, (y, x) in enumerate(((ye, xe), (ye, xs), (ys, xe), (ys, xs))):
            maps[:k, ..., 0] = x[:, None, :]
            maps[:k, ..., 1] = y[:, :, None]
            for lo, hi in zip(runs[:-1], runs[1:]):
                cv2.remap(ii.image(int(f[lo])), maps[lo:hi].reshape(-1, size, 2), None, cv2.INTER_NEAREST,
                          dst=g[c, lo:hi].reshape(-1, size, C))
        total = g[0, :k]
        total -= g[1, :k]
        total -= g[2, :k]
        total += g[3, :k]  # int32 with wrap-around, as `area_resize`
        area = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).astype(np.float32)
        o = out[a:a + k] if in_order else np.empty((k, C, size, size), np.float32)
        np.divide(total.transpose(0, 3, 1, 2), area[:, None], out=o, dtype=np.float32)
        o -= MEAN
        o *= SCALE
        if not in_order:
            out[sel] = o
    return out
