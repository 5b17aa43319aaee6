"""Memory-bound steps of the torch backend as Triton kernels (CUDA only).

* integral image: torch's cumsum along W of an (N, H, W, 3) tensor walks
  memory with a stride of 3 elements per thread; here one pass scans columns
  (coalesced over W*3) and one scans each row in tiles, so each byte moves
  once per pass.
* PNet tiles: every piece of every pyramid level of a batch resampled
  straight into its tile (the four-corner gather, area division and
  normalization of each pixel, written NHWC in the nets' dtype), with the
  tile's mask and cell-to-piece map, in one kernel from a small table of
  pieces: nothing per pixel is built on the host, whatever the image sizes.

* RNet/ONet crops, the suppression bit matrix of the fixed-shape NMS, and
  each conv's bias + PReLU (+ mask, + max pooling) epilogue.

Each kernel computes a function defined once elsewhere, and the GPU tests
(tests/test_torch_kernels.py) check it against that definition: the
integral against `crop.integral_image`, canvas and crops against
`crop.area_resize`/`crop.resize_region` (same bins, integer sums, IEEE
division `div_rn`, then the same subtraction and power-of-two scaling), the
suppression bits against `torch_nms.suppression` (`boxes.overlap`), the
fused nets against `nets.py`'s modules. Without Triton (CPU, or a build
without it; `triton` is then None here) the backend uses the torch versions
(`torch.triton_usable`, and its warm-up where Triton will not import);
a kernel that fails to compile or run on a machine makes the backend warn
and switch to them too.

This module imports nothing from the backend that uses it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..nets import flatten_wmajor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None


def remember_triton_key(folder: str | None) -> None:
    """Reuse, in this process, the Triton build fingerprint an earlier process computed and saved in `folder`.

    Why: Triton names every cached kernel by a hash of its own build, which it
    computes at a process's first kernel load by reading all of libtriton.so
    (~415 MB): 0.36 s on a 2-core VM, on the way to a job's kernels. The
    fingerprint changes only with the installed Triton, so it is saved under a
    stamp of the library file (size, mtime, inode, version) and read back.
    Where Triton has no `runtime.cache.triton_key` (another version), nothing changes.
    """
    if triton is None or folder is None:
        return
    try:
        from triton.runtime import cache as tc

        compute = getattr(tc, "triton_key", None)
        if compute is None or getattr(compute, "_fastmtcnn", False):
            return
        lib = next((Path(triton.__file__).parent / "_C").glob("libtriton.*"))
        st = lib.stat()
        stamp = hashlib.sha256(repr((triton.__version__, str(lib), st.st_size, st.st_mtime_ns, st.st_ino,
                                     os.stat(tc.__file__).st_mtime_ns)).encode()).hexdigest()[:32]
        note = Path(folder) / f"triton-key-{stamp}"
        try:
            key = note.read_text()
        except OSError:
            key = compute()
            tmp = note.with_name(f"{note.name}.{os.getpid()}")
            tmp.write_text(key)
            os.replace(tmp, note)

        def triton_key() -> str:
            return key

        triton_key._fastmtcnn = True
        tc.triton_key = triton_key
    except Exception:  # noqa: BLE001 - only a shortcut: Triton computes its own key as before
        return


def _jit(*, sizes: tuple[str, ...], views: tuple[str, ...] = ()):
    """`triton.jit` for a kernel whose `sizes` (int arguments) and `views` (pointers into a larger buffer)
    change with the images: one compiled kernel serves them all.

    Why: Triton compiles a kernel again for every new pattern of its int
    arguments (equal to 1, divisible by 16) and of its pointers' 16-byte
    alignment. The integral's sizes and its offset in a batch's buffer change
    with every photo size, and the warm-up (40x40) meets none of a real
    photo's patterns: each new one was a compile (or a load from Triton's
    cache) in the middle of a job, the "shape the process has not met". The
    price: the integral's byte loads are not vectorized (its input is read
    once; checked in the PTX for sm_90); the epilogues' row counts only bound
    a mask.
    """
    try:
        return triton.jit(do_not_specialize=sizes, do_not_specialize_on_alignment=views)
    except TypeError:  # a Triton from before do_not_specialize_on_alignment (3.2)
        return triton.jit(do_not_specialize=sizes)


if triton is not None:

    @_jit(sizes=(), views=("out_ptr",))
    def _column_scan(table_ptr, out_ptr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        # Program (n, block): a BLOCK of byte columns of image n, down all its rows. Table row n (int64):
        # the image's address ((H, W*3) uint8), H, W, the row of `out` ((rows, 3) int32) where its
        # (H+1, W+1, 3) integral starts. Tiles of ROWS x BLOCK: a scan down each tile plus the carry of
        # the tiles above. Column 0 is left to `_row_scan`.
        t = table_ptr + tl.program_id(0) * 4
        h = tl.load(t + 1).to(tl.int32)
        rw = tl.load(t + 2).to(tl.int32) * 3
        if tl.program_id(1) * BLOCK < rw:
            src = tl.load(t).to(tl.pointer_type(tl.uint8))
            dst = out_ptr + tl.load(t + 3) * 3 + 3
            orw = rw + 3
            offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
            m = offs < rw
            carry = tl.zeros([BLOCK], dtype=tl.int32)
            tl.store(dst + offs, carry, mask=m)  # row 0
            r = tl.arange(0, ROWS)[:, None]
            for h0 in range(0, h, ROWS):
                mm = ((h0 + r) < h) & m[None, :]
                v = tl.load(src + (h0 + r) * rw + offs[None, :], mask=mm, other=0).to(tl.int32)
                tl.store(dst + (h0 + 1 + r) * orw + offs[None, :], tl.cumsum(v, axis=0) + carry[None, :], mask=mm)
                carry += tl.sum(v, axis=0)

    @_jit(sizes=(), views=("out_ptr",))
    def _row_scan(table_ptr, out_ptr, BLOCK: tl.constexpr):
        # Program (row, n): that row of image n's integral (`_column_scan`'s table), in place -> prefix
        # sums along W; column 0 set to zero.
        t = table_ptr + tl.program_id(1) * 4
        y = tl.program_id(0)
        if y <= tl.load(t + 1).to(tl.int32):
            w1 = tl.load(t + 2).to(tl.int32) + 1
            row = out_ptr + (tl.load(t + 3) + y.to(tl.int64) * w1) * 3
            w = tl.arange(0, BLOCK)[:, None]
            c = tl.arange(0, 4)[None, :]
            carry = tl.zeros([4], dtype=tl.int32)
            for w0 in range(0, w1, BLOCK):
                m = ((w0 + w) < w1) & (c < 3)
                p = row + (w0 + w) * 3 + c
                v = tl.where(w0 + w == 0, 0, tl.load(p, mask=m, other=0))
                s = tl.cumsum(v, axis=0) + carry[None, :]
                tl.store(p, s, mask=m)
                carry += tl.sum(v, axis=0)

    @triton.jit
    def _tiles(ii_ptr, img_ptr, piece_ptr, x_ptr, mask_ptr, cell_ptr, T, K, BY: tl.constexpr, BX: tl.constexpr,
               MEAN: tl.constexpr, SCALE: tl.constexpr):
        # One program: BY rows of one piece (`pyramid.Piece`, a row of `pieces`: tile, y, x, h, w, src_y,
        # src_x, level_h, level_w, image, index), every column. Writes the tile pixels (x: (B, T, T, 3),
        # `crop.resize_region`'s numbers), zeros on the piece's valid conv1 area of the mask ((B, T-2, T-2),
        # filled with the mask value before) and the piece's index on its valid cells ((B, K, K), -1 before).
        row = piece_ptr + tl.program_id(0) * 11
        i = tl.program_id(1) * BY + tl.arange(0, BY)
        h = tl.load(row + 3)
        if tl.program_id(1) * BY < h:
            slot = tl.load(row).to(tl.int64)
            y0 = tl.load(row + 1)
            x0 = tl.load(row + 2)
            w = tl.load(row + 4)
            sy = tl.load(row + 5)
            sx = tl.load(row + 6)
            lh = tl.load(row + 7)
            lw = tl.load(row + 8)
            img = tl.load(row + 9)
            index = tl.load(row + 10)
            base = ii_ptr + tl.load(img_ptr + img * 3).to(tl.int64) * 3
            H = tl.load(img_ptr + img * 3 + 1).to(tl.int32)
            W = tl.load(img_ptr + img * 3 + 2).to(tl.int32)
            W1 = W + 1
            r = sy + i
            ys = (r * H) // lh
            ye = ((r + 1) * H + lh - 1) // lh
            mi = i < h
            oh = (h - 1) // 2 - 4
            ow = (w - 1) // 2 - 4
            for j0 in range(0, w, BX):
                j = j0 + tl.arange(0, BX)
                mj = j < w
                c = sx + j
                xs = (c * W) // lw
                xe = ((c + 1) * W + lw - 1) // lw
                m = mi[:, None] & mj[None, :]
                area = ((ye - ys)[:, None] * (xe - xs)[None, :]).to(tl.float32)
                pix = ((slot * T + y0 + i)[:, None] * T + (x0 + j)[None, :]) * 3
                for ch in tl.static_range(3):
                    t = ((tl.load(base + (ye[:, None] * W1 + xe[None, :]) * 3 + ch, mask=m, other=0)
                          - tl.load(base + (ye[:, None] * W1 + xs[None, :]) * 3 + ch, mask=m, other=0))
                         - (tl.load(base + (ys[:, None] * W1 + xe[None, :]) * 3 + ch, mask=m, other=0)
                            - tl.load(base + (ys[:, None] * W1 + xs[None, :]) * 3 + ch, mask=m, other=0)))
                    v = (tl.math.div_rn(t.to(tl.float32), area) - MEAN) * SCALE
                    tl.store(x_ptr + pix + ch, v.to(x_ptr.dtype.element_ty), mask=m)
                mm = (i < h - 2)[:, None] & (j < w - 2)[None, :]
                tl.store(mask_ptr + (slot * (T - 2) + y0 + i)[:, None] * (T - 2) + (x0 + j)[None, :],
                         tl.zeros([BY, BX], dtype=mask_ptr.dtype.element_ty), mask=mm)
                mc = (((i % 2) == 0) & (i // 2 < oh))[:, None] & (((j % 2) == 0) & (j // 2 < ow))[None, :]
                cell = (slot * K + y0 // 2 + i // 2)[:, None] * K + (x0 // 2 + j // 2)[None, :]
                tl.store(cell_ptr + cell, tl.zeros([BY, BX], dtype=tl.int32) + index, mask=mc)

    @triton.jit
    def _crops(ii_ptr, frame_ptr, img_ptr, win_ptr, out_ptr, S: tl.constexpr, BLOCK: tl.constexpr,
               MEAN: tl.constexpr, SCALE: tl.constexpr):
        # out (n, S, S, 3): window [y0, y1) x [x0, x1) of its image, area-averaged to S x S and normalized;
        # the bins of `crop.area_bins` (exact integer maths), the sums of `crop.area_resize`. img: per image
        # (row offset of its integral, H, W) int64
        c = tl.program_id(0)
        p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = p < S * S
        i, j = p // S, p % S
        y0 = tl.load(win_ptr + c * 4)
        ly = tl.load(win_ptr + c * 4 + 1) - y0
        x0 = tl.load(win_ptr + c * 4 + 2)
        lx = tl.load(win_ptr + c * 4 + 3) - x0
        ys, ye = y0 + (i * ly) // S, y0 + ((i + 1) * ly + S - 1) // S
        xs, xe = x0 + (j * lx) // S, x0 + ((j + 1) * lx + S - 1) // S
        area = ((ye - ys) * (xe - xs)).to(tl.float32)
        f = tl.load(frame_ptr + c)
        base = ii_ptr + tl.load(img_ptr + f * 3) * 3
        W1 = tl.load(img_ptr + f * 3 + 2).to(tl.int32) + 1
        dst = out_ptr + (c.to(tl.int64) * S * S + p) * 3
        for ch in tl.static_range(3):
            t = ((tl.load(base + (ye * W1 + xe) * 3 + ch, mask=m, other=0)
                  - tl.load(base + (ye * W1 + xs) * 3 + ch, mask=m, other=0))
                 - (tl.load(base + (ys * W1 + xe) * 3 + ch, mask=m, other=0)
                    - tl.load(base + (ys * W1 + xs) * 3 + ch, mask=m, other=0)))
            v = (tl.math.div_rn(t.to(tl.float32), area) - MEAN) * SCALE
            tl.store(dst + ch, v.to(out_ptr.dtype.element_ty), mask=m)


if triton is not None:

    @triton.jit
    def _suppression_bits(b_ptr, area_ptr, valid_ptr, group_ptr, count_ptr, out_ptr, K, KW, THR: tl.constexpr,
                          ADD: tl.constexpr, MIN_MODE: tl.constexpr, HAS_GROUP: tl.constexpr, BI: tl.constexpr,
                          WB: tl.constexpr):
        # out (N, K, KW) int32, zeroed: in row i, bit j % 32 of word j // 32 is set where slot j (earlier =
        # higher in greedy order) suppresses slot i. Overlap arithmetic of `boxes.overlap`. count: per row,
        # past its last valid slot (no bit is set from there on).
        n = tl.program_id(0)
        i0 = tl.program_id(1) * BI
        i = i0 + tl.arange(0, BI)
        j0 = tl.program_id(2) * WB * 32
        cnt = tl.load(count_ptr + n)
        if (j0 < i0 + BI) & (i0 < cnt) & (j0 < cnt):  # else every j >= every i, or no valid slot: nothing to set
            j = j0 + tl.arange(0, WB * 32)
            mj, mi = j < K, i < K
            bj = b_ptr + (n.to(tl.int64) * K + j) * 4
            bi = b_ptr + (n.to(tl.int64) * K + i) * 4
            x1j = tl.load(bj, mask=mj, other=0)[:, None]
            y1j = tl.load(bj + 1, mask=mj, other=0)[:, None]
            x2j = tl.load(bj + 2, mask=mj, other=0)[:, None]
            y2j = tl.load(bj + 3, mask=mj, other=0)[:, None]
            x1i = tl.load(bi, mask=mi, other=0)[None, :]
            y1i = tl.load(bi + 1, mask=mi, other=0)[None, :]
            x2i = tl.load(bi + 2, mask=mi, other=0)[None, :]
            y2i = tl.load(bi + 3, mask=mi, other=0)[None, :]
            aj = tl.load(area_ptr + n * K + j, mask=mj, other=0)[:, None]
            ai = tl.load(area_ptr + n * K + i, mask=mi, other=0)[None, :]
            w = tl.maximum(tl.minimum(x2j, x2i) - tl.maximum(x1j, x1i) + ADD, 0.0)
            h = tl.maximum(tl.minimum(y2j, y2i) - tl.maximum(y1j, y1i) + ADD, 0.0)
            inter = w * h
            if MIN_MODE:
                denom = tl.minimum(aj, ai)
            else:
                denom = aj + ai - inter
            s = tl.math.div_rn(inter, denom) > THR
            vj = tl.load(valid_ptr + n * K + j, mask=mj, other=0) != 0
            vi = tl.load(valid_ptr + n * K + i, mask=mi, other=0) != 0
            s = s & vj[:, None] & vi[None, :] & (j[:, None] < i[None, :])
            if HAS_GROUP:
                gj = tl.load(group_ptr + n * K + j, mask=mj, other=0)
                gi = tl.load(group_ptr + n * K + i, mask=mi, other=0)
                s = s & (gj[:, None] == gi[None, :])
            bits = s.to(tl.int32) << (j % 32)[:, None]  # distinct bits: their sum is their OR
            words = tl.sum(tl.reshape(bits, (WB, 32, BI)), axis=1)  # (WB, BI)
            wi = tl.program_id(2) * WB + tl.arange(0, WB)
            out = out_ptr + (n.to(tl.int64) * K + i[None, :]) * KW + wi[:, None]
            tl.store(out, words, mask=(wi < KW)[:, None] & mi[None, :])

    @triton.jit
    def _keep_step(t_ptr, valid_ptr, count_ptr, keep_ptr, out_ptr, K, KW, KWP: tl.constexpr, BI: tl.constexpr):
        # one fixed-point step of greedy NMS: out[i] = valid[i] and no kept j has its bit set in row i;
        # rows and words past the row's count hold no bit (not read)
        n = tl.program_id(0)
        i = tl.program_id(1) * BI + tl.arange(0, BI)
        mi = i < K
        cnt = tl.load(count_ptr + n)
        w = tl.arange(0, KWP)
        j = w[:, None] * 32 + tl.arange(0, 32)[None, :]
        kj = tl.load(keep_ptr + n * K + j, mask=j < cnt, other=0).to(tl.int32)
        kept = tl.sum(kj << tl.arange(0, 32)[None, :], axis=1)  # the kept slots as words
        rows = tl.load(t_ptr + (n.to(tl.int64) * K + i[:, None]) * KW + w[None, :],
                       mask=(i < cnt)[:, None] & (w * 32 < cnt)[None, :], other=0)
        hit = tl.sum(((rows & kept[None, :]) != 0).to(tl.int32), axis=1) > 0
        v = tl.load(valid_ptr + n * K + i, mask=mi, other=0)
        tl.store(out_ptr + n * K + i, tl.where(hit, 0, v), mask=mi)


def greedy_keep(b: torch.Tensor, area: torch.Tensor, valid: torch.Tensor, group: torch.Tensor | None,
                threshold: float, mode: str, add: float, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch_nms.dense_nms` with the suppression matrix as bits (K x K/32 words per frame, not K x K halves).

    Why: at 64 frames x 2048 slots the fp16 matrix is 512 MB, written once and
    read on every step; the bits are 32 MB, and a step reads them in one kernel.
    """
    n, k = valid.shape
    kw = triton.cdiv(k, 32)
    bits = torch.zeros((n, k, kw), dtype=torch.int32, device=b.device)
    b = b[..., :4].contiguous().to(torch.float32)
    v = valid.to(torch.int8).contiguous()
    # per row, one past its last valid slot: the work follows the slots in use, not the capacity (the
    # cascade's valid slots come first; a folder window's first NMS has 4096 a row, mostly empty)
    count = (valid.to(torch.int32) * torch.arange(1, k + 1, dtype=torch.int32, device=b.device)).amax(dim=1)
    g = v if group is None else group.to(torch.int32).contiguous()
    bi, wb = 64, 2
    _suppression_bits[(n, triton.cdiv(k, bi), triton.cdiv(kw, wb))](
        b, area.contiguous(), v, g, count, bits, k, kw, THR=float(threshold), ADD=float(add), MIN_MODE=mode == "min",
        HAS_GROUP=group is not None, BI=bi, WB=wb, enable_fp_fusion=False)
    kwp = triton.next_power_of_2(kw)
    bs = max(1, min(64, 8192 // kwp))

    def step(keep):
        out = torch.empty_like(keep)
        _keep_step[(n, triton.cdiv(k, bs))](bits, v, count, keep, out, k, kw, KWP=kwp, BI=bs)
        return out

    keep = v
    for _ in range(iters):
        keep = step(keep)
    return keep.bool(), (step(keep) == keep).all()


if triton is not None:

    @_jit(sizes=("R",))
    def _bias_prelu(x_ptr, b_ptr, w_ptr, out_ptr, R, C: tl.constexpr, BC: tl.constexpr, BR: tl.constexpr):
        # NHWC rows of C channels: prelu(x + bias), each step rounded to the tensor's dtype as torch does
        r = tl.program_id(0) * BR + tl.arange(0, BR)
        c = tl.arange(0, BC)
        m = (r < R)[:, None] & (c < C)[None, :]
        dt = x_ptr.dtype.element_ty
        off = r.to(tl.int64)[:, None] * C + c[None, :]
        v = tl.load(x_ptr + off, mask=m, other=0).to(tl.float32)
        b = tl.load(b_ptr + c, mask=c < C, other=0).to(tl.float32)[None, :]
        a = tl.load(w_ptr + c, mask=c < C, other=0).to(tl.float32)[None, :]
        t = (v + b).to(dt).to(tl.float32)
        t = tl.where(t > 0, t, a * t)
        tl.store(out_ptr + off, t.to(dt), mask=m)

    @_jit(sizes=("MN",))
    def _bias_prelu_pool(x_ptr, b_ptr, w_ptr, m_ptr, out_ptr, H, W, Ho, Wo, MN, C: tl.constexpr, BC: tl.constexpr,
                         BP: tl.constexpr, K: tl.constexpr, S: tl.constexpr, HAS_MASK: tl.constexpr):
        # conv epilogue, NHWC: max pooling (K x K, stride S, ceil mode) of prelu(x + bias) (+ mask: PNet's
        # tiles; MN: the mask's stride between images, 0 when one mask serves all)
        n = tl.program_id(0)
        p = tl.program_id(1) * BP + tl.arange(0, BP)
        mp = p < Ho * Wo
        oy, ox = p // Wo, p % Wo
        c = tl.arange(0, BC)
        mc = c < C
        dt = x_ptr.dtype.element_ty
        b = tl.load(b_ptr + c, mask=mc, other=0).to(tl.float32)[None, :]
        a = tl.load(w_ptr + c, mask=mc, other=0).to(tl.float32)[None, :]
        best = tl.full([BP, BC], float("-inf"), tl.float32)
        for dy in tl.static_range(K):
            for dx in tl.static_range(K):
                y = S * oy + dy
                x = S * ox + dx
                ok = mp & (y < H) & (x < W)
                pix = (n.to(tl.int64) * H + y) * W + x
                v = tl.load(x_ptr + pix[:, None] * C + c[None, :], mask=ok[:, None] & mc[None, :], other=0)
                t = (v.to(tl.float32) + b).to(dt).to(tl.float32)
                t = tl.where(t > 0, t, a * t).to(dt).to(tl.float32)
                if HAS_MASK:
                    mk = tl.load(m_ptr + n.to(tl.int64) * MN + y * W + x, mask=ok, other=0).to(dt).to(tl.float32)
                    t = (t + mk[:, None]).to(dt).to(tl.float32)
                best = tl.where(ok[:, None], tl.maximum(best, t), best)
        dst = out_ptr + (n.to(tl.int64) * Ho * Wo + p)[:, None] * C + c[None, :]
        tl.store(dst, best.to(dt), mask=mp[:, None] & mc[None, :])



def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def bias_prelu(x: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """prelu(x + bias) of an (N, C, H, W) conv output, NHWC in and out, one pass."""
    x = _nhwc(x)
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    rows = n * h * w
    br = 128
    _bias_prelu[(triton.cdiv(rows, br),)](x, bias, weight, out, rows, C=c, BC=triton.next_power_of_2(c), BR=br,
                                          enable_fp_fusion=False)
    return out


def bias_prelu_pool(x: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor, k: int, stride: int,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """maxpool_k_stride_ceil(prelu(x + bias) [+ mask]) of an (N, C, H, W) conv output in one pass, NHWC in and out."""
    x = _nhwc(x)
    n, c, h, w = x.shape
    ho, wo = -(-(h - k) // stride) + 1, -(-(w - k) // stride) + 1  # ceil mode, no padding
    out = torch.empty((n, ho, wo, c), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
    bp = 64 if c <= 32 else 32
    m = mask.contiguous() if mask is not None else bias
    mn = h * w if mask is not None and mask.shape[0] > 1 else 0
    _bias_prelu_pool[(n, triton.cdiv(ho * wo, bp))](x, bias, weight, m, out, h, w, ho, wo, mn, C=c,
                                                     BC=triton.next_power_of_2(c), BP=bp, K=k, S=stride,
                                                     HAS_MASK=mask is not None, enable_fp_fusion=False)
    return out


def _conv(x, conv, prelu, pool: tuple[int, int] | None = None, mask=None):
    """conv (cuDNN, no bias) + one fused epilogue: bias, PReLU and, if given, the mask and max pooling."""
    y = F.conv2d(x, conv.weight)
    if pool is None:
        return bias_prelu(y, conv.bias, prelu.weight)
    return bias_prelu_pool(y, conv.bias, prelu.weight, *pool, mask=mask)


def _dense(x, dense, prelu):
    """Linear (cuBLAS, no bias) + fused bias and PReLU: the (rows, C) case of `bias_prelu`."""
    y = F.linear(x, dense.weight)
    return bias_prelu(y[:, :, None, None], dense.bias, prelu.weight).reshape(y.shape)


def fused_nets(pnet: torch.nn.Module, rnet: torch.nn.Module, onet: torch.nn.Module):
    """The three nets with each conv's bias, PReLU (+ PNet's canvas mask) and pooling in one kernel after cuDNN.

    The same functions as `nets.py`'s modules; each step rounds to the nets'
    dtype as torch does (see `_bias_prelu*`). Why: unfused, the bias add,
    PReLU and NHWC max pooling each take a full pass over the conv output,
    and on RNet/ONet batches those passes cost more than the convolutions.
    (A Triton direct convolution for PNet's 3-channel conv1 was tried and was
    slower than cuDNN's: 4.2 ms per 64 frames of 1920x1080 in an H100 profile.)
    """
    class FusedPNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = pnet

        def forward(self, image, mask=None):
            p = self.net
            x = _conv(image, p.conv1, p.prelu1, (2, 2), mask)
            x = _conv(_conv(x, p.conv2, p.prelu2), p.conv3, p.prelu3)
            a = p.conv4_1(x)
            return p.conv4_2(x), torch.sigmoid(a[:, 1:2] - a[:, 0:1])

    class FusedRNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = rnet

        def forward(self, image):
            r = self.net
            x = _conv(_conv(image, r.conv1, r.prelu1, (3, 2)), r.conv2, r.prelu2, (3, 2))
            x = _dense(flatten_wmajor(_conv(x, r.conv3, r.prelu3)), r.dense4, r.prelu4)
            return r.dense5_2(x), torch.softmax(r.dense5_1(x), dim=1)

    class FusedONet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = onet

        def forward(self, image):
            o = self.net
            x = _conv(_conv(image, o.conv1, o.prelu1, (3, 2)), o.conv2, o.prelu2, (3, 2))
            x = _conv(_conv(x, o.conv3, o.prelu3, (2, 2)), o.conv4, o.prelu4)
            x = _dense(flatten_wmajor(x), o.dense5, o.prelu5)
            return o.dense6_2(x), o.dense6_3(x), torch.softmax(o.dense6_1(x), dim=1)

    return FusedPNet(), FusedRNet(), FusedONet()


def integrals(images: list[torch.Tensor], flat: torch.Tensor, offsets) -> torch.Tensor:
    """`crop.integral_image` of uint8 (H, W, 3) CUDA images of any sizes into one (rows, 3) int32 buffer,
    image i's from row offsets[i]: two launches for the whole batch.

    Why one launch for all: launching a Triton kernel costs the host ~70 us in
    Python; per image (a column scan, a row scan, a border fill) that was 0.2 ms
    of host time a photo on a folder's window of 64 (H100 cProfile), time the
    GPU waits for. Each image's address, size and place come from a small
    table, so nothing is specialized on sizes or alignments either.
    """
    images = [im.contiguous() for im in images]
    if not images:
        return flat
    table = torch.tensor([[im.data_ptr(), im.shape[0], im.shape[1], int(o)] for im, o in zip(images, offsets)],
                         dtype=torch.int64)
    if flat.is_cuda:  # through page-locked memory: no stream sync
        table = table.pin_memory().to(flat.device, non_blocking=True)
    n = len(images)
    tallest = max(im.shape[0] for im in images)
    widest = max(im.shape[1] for im in images)
    block = 128
    _column_scan[(n, triton.cdiv(widest * 3, block))](table, flat, ROWS=16, BLOCK=block)
    _row_scan[(tallest + 1, n)](table, flat, BLOCK=256)
    return flat


def tiles(ii: torch.Tensor, images: torch.Tensor, pieces: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
          cells: torch.Tensor, tile: int, rows: int, mean: float, scale: float) -> torch.Tensor:
    """Fill PNet tiles from the pieces' table, in place (see `_tiles`): x (B, T, T, 3) in the nets' dtype,
    mask (B, T-2, T-2) pre-filled with the mask value, cells (B, K, K) int32 pre-filled with -1.

    ii: a batch's integral images, (rows, 3) int32; images: (n, 3) int64 (row offset, H, W);
    pieces: (P, 11) int32; rows: the tallest piece (the grid's second axis; a table padded with
    zero-height pieces may say the tile side).
    """
    by, bx = 8, 64
    if pieces.shape[0]:
        _tiles[(pieces.shape[0], triton.cdiv(rows, by))](ii, images, pieces, x, mask, cells, tile, cells.shape[-1],
                                                          BY=by, BX=bx, MEAN=mean, SCALE=scale, enable_fp_fusion=False)
    return x


def crops(ii: torch.Tensor, images: torch.Tensor, frame: torch.Tensor, windows: torch.Tensor, size: int,
          dtype: torch.dtype, mean: float, scale: float) -> torch.Tensor:
    """`crop.area_resize` of (n, 4) windows to size x size in one kernel: (n, 3, size, size) in `dtype`, NHWC memory.

    ii: (rows, 3) int32 integral images; images: (m, 3) int64 (row offset, H, W) of each image."""
    n = windows.shape[0]
    out = torch.empty((n, size, size, 3), dtype=dtype, device=ii.device)
    if n:
        block = 256
        _crops[(n, triton.cdiv(size * size, block))](ii, frame.contiguous(), images, windows.contiguous(), out,
                                                     S=size, BLOCK=block, MEAN=mean, SCALE=scale,
                                                     enable_fp_fusion=False)
    return out.permute(0, 3, 1, 2)
