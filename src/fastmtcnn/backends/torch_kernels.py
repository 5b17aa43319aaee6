"""Two memory-bound steps of the torch backend as Triton kernels (CUDA only).

* integral image: torch's cumsum along W of an (N, H, W, 3) tensor walks
  memory with a stride of 3 elements per thread; here one pass scans columns
  (coalesced over W*3) and one scans each row in tiles, so each byte moves
  once per pass.
* packed canvas: the four-corner gather, area division and normalization of
  every canvas pixel in one kernel, written NHWC in the nets' dtype, instead
  of a gathered (N, 4, P, 3) int32 temporary and four elementwise passes.

Both give exactly the torch versions' numbers (integer sums; IEEE division
`div_rn`, then the same subtraction and power-of-two scaling). Without
Triton (CPU, or a build without it) `available()` is False and the backend
uses the torch versions.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None


def available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


if triton is not None:

    @triton.jit
    def _column_scan(x_ptr, out_ptr, H, RW, ORW, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        # x: (N, H, RW) uint8 rows of W*3; out: (N, H+1, ORW) int32 with ORW = (W+1)*3.
        # Tiles of ROWS x BLOCK: a scan down each tile plus the carry of the tiles above.
        n = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < RW
        carry = tl.zeros([BLOCK], dtype=tl.int32)
        src = x_ptr + n.to(tl.int64) * H * RW
        dst = out_ptr + n.to(tl.int64) * (H + 1) * ORW + 3
        tl.store(dst + offs, carry, mask=m)  # row 0
        r = tl.arange(0, ROWS)[:, None]
        for h0 in range(0, H, ROWS):
            mm = ((h0 + r) < H) & m[None, :]
            v = tl.load(src + (h0 + r) * RW + offs[None, :], mask=mm, other=0).to(tl.int32)
            tl.store(dst + (h0 + 1 + r) * ORW + offs[None, :], tl.cumsum(v, axis=0) + carry[None, :], mask=mm)
            carry += tl.sum(v, axis=0)

    @triton.jit
    def _row_scan(out_ptr, W1, BLOCK: tl.constexpr):
        # in place: each row (W1 pixels x 3 channels, column 0 zero) -> prefix sums along W
        row = out_ptr + tl.program_id(0).to(tl.int64) * W1 * 3
        w = tl.arange(0, BLOCK)[:, None]
        c = tl.arange(0, 4)[None, :]
        carry = tl.zeros([4], dtype=tl.int32)
        for w0 in range(0, W1, BLOCK):
            m = ((w0 + w) < W1) & (c < 3)
            p = row + (w0 + w) * 3 + c
            v = tl.load(p, mask=m, other=0)
            s = tl.cumsum(v, axis=0) + carry[None, :]
            tl.store(p, s, mask=m)
            carry += tl.sum(v, axis=0)

    @triton.jit
    def _canvas(ii_ptr, corners_ptr, area_ptr, out_ptr, P, FRAME, OC: tl.constexpr, BLOCK: tl.constexpr,
                MEAN: tl.constexpr, SCALE: tl.constexpr):
        # out (N, P, OC), channels 0-2: ((ee - es - se + ss) / area - MEAN) * SCALE per canvas pixel
        n = tl.program_id(0)
        p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = p < P
        ss = tl.load(corners_ptr + p, mask=m, other=0)
        se = tl.load(corners_ptr + P + p, mask=m, other=0)
        es = tl.load(corners_ptr + 2 * P + p, mask=m, other=0)
        ee = tl.load(corners_ptr + 3 * P + p, mask=m, other=0)
        area = tl.load(area_ptr + p, mask=m, other=1.0)
        base = ii_ptr + n.to(tl.int64) * FRAME
        dst = out_ptr + (n.to(tl.int64) * P + p) * OC
        for c in tl.static_range(3):
            t = ((tl.load(base + ee * 3 + c, mask=m, other=0) - tl.load(base + es * 3 + c, mask=m, other=0))
                 - (tl.load(base + se * 3 + c, mask=m, other=0) - tl.load(base + ss * 3 + c, mask=m, other=0)))
            v = (tl.math.div_rn(t.to(tl.float32), area) - MEAN) * SCALE
            tl.store(dst + c, v.to(out_ptr.dtype.element_ty), mask=m)


if triton is not None:

    @triton.jit
    def _suppression(b_ptr, area_ptr, valid_ptr, group_ptr, out_ptr, K, THR: tl.constexpr, ADD: tl.constexpr,
                     MIN_MODE: tl.constexpr, HAS_GROUP: tl.constexpr, BJ: tl.constexpr, BI: tl.constexpr):
        # out (N, K, K) fp16: 1 where slot j (row, earlier = higher rank) suppresses slot i (column)
        n = tl.program_id(0)
        j = tl.program_id(1) * BJ + tl.arange(0, BJ)
        i = tl.program_id(2) * BI + tl.arange(0, BI)
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
        out = out_ptr + (n.to(tl.int64) * K + j[:, None]) * K + i[None, :]
        tl.store(out, s.to(tl.float16), mask=mj[:, None] & mi[None, :])


def suppression(b: torch.Tensor, area: torch.Tensor, valid: torch.Tensor, group: torch.Tensor | None,
                threshold: float, mode: str, add: float) -> torch.Tensor:
    """(N, K, K) fp16 suppression matrix in one kernel (see `torch_static.suppression`, same arithmetic)."""
    n, k = valid.shape
    out = torch.empty((n, k, k), dtype=torch.float16, device=b.device)
    b = b[..., :4].contiguous().to(torch.float32)
    v = valid.to(torch.int8).contiguous()
    g = v if group is None else group.to(torch.int32).contiguous()
    blk = 64
    _suppression[(n, triton.cdiv(k, blk), triton.cdiv(k, blk))](
        b, area.contiguous(), v, g, out, k, THR=float(threshold), ADD=float(add), MIN_MODE=mode == "min",
        HAS_GROUP=group is not None, BJ=blk, BI=blk, enable_fp_fusion=False)
    return out


if triton is not None:

    @triton.jit
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

    @triton.jit
    def _bias_prelu_mask_pool(x_ptr, b_ptr, w_ptr, m_ptr, out_ptr, H, W, Ho, Wo, C: tl.constexpr,
                              BC: tl.constexpr, BP: tl.constexpr):
        # PNet after conv1: prelu(x + bias) + mask, then 2x2 max pooling (stride 2, ceil mode), NHWC
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
        for dy in tl.static_range(2):
            for dx in tl.static_range(2):
                y = 2 * oy + dy
                x = 2 * ox + dx
                ok = mp & (y < H) & (x < W)
                pix = (n.to(tl.int64) * H + y) * W + x
                v = tl.load(x_ptr + pix[:, None] * C + c[None, :], mask=ok[:, None] & mc[None, :], other=0)
                t = (v.to(tl.float32) + b).to(dt).to(tl.float32)
                t = tl.where(t > 0, t, a * t).to(dt).to(tl.float32)
                mk = tl.load(m_ptr + y * W + x, mask=ok, other=0).to(dt).to(tl.float32)
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


def bias_prelu_mask_pool(x: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PNet's conv1 epilogue in one pass: maxpool2x2_ceil(prelu(x + bias) + mask), NHWC in and out."""
    x = _nhwc(x)
    n, c, h, w = x.shape
    ho, wo = (h + 1) // 2, (w + 1) // 2
    out = torch.empty((n, ho, wo, c), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
    bp = 64
    _bias_prelu_mask_pool[(n, triton.cdiv(ho * wo, bp))](x, bias, weight, mask.contiguous(), out, h, w, ho, wo, C=c,
                                                          BC=triton.next_power_of_2(c), BP=bp,
                                                          enable_fp_fusion=False)
    return out


def fused_pnet(pnet: torch.nn.Module) -> torch.nn.Module:
    """PNet with bias, PReLU, canvas mask and pooling fused into two kernels (the same function; see `_bias_prelu*`)."""
    import torch.nn.functional as F

    class FusedPNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = pnet

        def forward(self, image, mask=None):
            p = self.net
            x = F.conv2d(image, p.conv1.weight)
            if mask is None:
                mask = torch.zeros((1, 1) + x.shape[2:], dtype=x.dtype, device=x.device)
            x = bias_prelu_mask_pool(x, p.conv1.bias, p.prelu1.weight, mask)
            x = bias_prelu(F.conv2d(x, p.conv2.weight), p.conv2.bias, p.prelu2.weight)
            x = bias_prelu(F.conv2d(x, p.conv3.weight), p.conv3.bias, p.prelu3.weight)
            a = p.conv4_1(x)
            return p.conv4_2(x), torch.sigmoid(a[:, 1:2] - a[:, 0:1])

    return FusedPNet()


def self_test_pnet(pnet: torch.nn.Module, dtype: torch.dtype) -> str | None:
    """The fused PNet against the plain one on a random masked canvas; None if close, else the reason."""
    try:
        dev = next(pnet.parameters()).device
        g = torch.Generator(device="cpu").manual_seed(2)
        x = (torch.rand(2, 3, 61, 90, generator=g) * 2 - 1).to(dev, dtype).contiguous(memory_format=torch.channels_last)
        mask = torch.zeros(1, 1, 59, 88)
        mask[..., 31:, :] = -32.0
        mask[..., :, 47:] = -32.0
        mask = mask.to(dev)
        with torch.inference_mode():
            r1, p1 = pnet(x, mask)
            r2, p2 = fused_pnet(pnet)(x, mask)
        tol = 2e-2 if dtype == torch.float16 else 1e-3
        err = max(float((r1.float() - r2.float()).abs().max()), float((p1.float() - p2.float()).abs().max()))
        if not err <= tol:
            return f"fused PNet differs by {err:g}"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def integral(frames: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 CUDA -> (N, H+1, W+1, 3) int32 inclusive prefix sums with a zero border."""
    n, h, w, c = frames.shape
    frames = frames.contiguous()
    out = torch.empty((n, h + 1, w + 1, c), dtype=torch.int32, device=frames.device)
    out[:, :, 0, :] = 0
    rows, block = (16, 128) if n < 8 else (1, 256)  # tiles add parallel work when there are few frames
    _column_scan[(n, triton.cdiv(w * c, block))](frames, out, h, w * c, (w + 1) * c, ROWS=rows, BLOCK=block)
    _row_scan[(n * (h + 1),)](out, w + 1, BLOCK=256)
    return out


def canvas(ii: torch.Tensor, corners: torch.Tensor, area: torch.Tensor, dtype: torch.dtype,
           mean: float, scale: float, channels: int = 3) -> torch.Tensor:
    """(N, P, channels) canvas pixels in `dtype` from the integral image and the corner offsets (4, P).

    Channels past the third, if asked for, are zero.
    """
    n = ii.shape[0]
    p = area.shape[0]
    alloc = torch.empty if channels == 3 else torch.zeros
    out = alloc((n, p, channels), dtype=dtype, device=ii.device)
    block = 256
    _canvas[(n, triton.cdiv(p, block))](ii, corners, area, out, p, ii.shape[1] * ii.shape[2] * 3,
                                        OC=channels, BLOCK=block, MEAN=mean, SCALE=scale)
    return out


def self_test(device: torch.device) -> str | None:
    """Run the integral and canvas kernels once on random data against torch; None if they agree, else the reason."""
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        frames = torch.randint(0, 256, (2, 37, 53, 3), generator=g, dtype=torch.uint8).to(device)
        want = torch.nn.functional.pad(frames, (0, 0, 1, 0, 1, 0))
        want = torch.cumsum(torch.cumsum(want, 1, dtype=torch.int32), 2, dtype=torch.int32)
        ii = integral(frames)
        if not torch.equal(ii, want):
            return "integral differs from torch.cumsum"
        p = 300
        ys = torch.randint(0, 37, (2, p), generator=g).sort(0).values
        xs = torch.randint(0, 53, (2, p), generator=g).sort(0).values
        ys[1] += 1
        xs[1] += 1
        w1 = 54
        corners = torch.stack([ys[0] * w1 + xs[0], ys[0] * w1 + xs[1], ys[1] * w1 + xs[0], ys[1] * w1 + xs[1]]).to(device)
        area = ((ys[1] - ys[0]) * (xs[1] - xs[0])).to(torch.float32).to(device)
        got = canvas(ii, corners, area, torch.float32, 127.5, 0.0078125)
        flat = ii.reshape(2, -1, 3)
        gs = [flat[:, corners[k]] for k in range(4)]
        total = (gs[3] - gs[2]) - (gs[1] - gs[0])
        ref = (total.to(torch.float32) / area[None, :, None] - 127.5) * 0.0078125
        if not torch.equal(got, ref):
            return "canvas differs from the torch gather"
    except Exception as e:  # a Triton or driver problem: run the torch versions instead
        return f"{type(e).__name__}: {e}"
    return None


def self_test_nms(device: torch.device) -> str | None:
    """The suppression kernel against `torch_static.suppression` on random boxes; None if equal, else the reason."""
    try:
        from .torch_static import suppression as torch_suppression

        g = torch.Generator(device="cpu").manual_seed(1)
        xy = torch.rand(2, 700, 2, generator=g) * 100
        bx = torch.cat([xy, xy + torch.rand(2, 700, 2, generator=g) * 30 + 1], dim=2).to(device)
        valid = (torch.rand(2, 700, generator=g) > 0.2).to(device)
        grp = torch.randint(0, 3, (2, 700), generator=g).to(device)
        for mode, add, grp_ in (("union", 0.0, grp), ("min", 1.0, None), ("union", 0.0, None)):
            bx = bx.floor() if mode == "min" else bx
            area = (bx[..., 2] - bx[..., 0] + add) * (bx[..., 3] - bx[..., 1] + add)
            want = torch_suppression(bx, valid, grp_, 0.5, mode, add == 1.0, torch.float16)
            if not torch.equal(suppression(bx, area, valid, grp_, 0.5, mode, add), want):
                return f"suppression ({mode}) differs from the torch version"
    except Exception as e:  # a Triton or driver problem: run the torch versions instead
        return f"{type(e).__name__}: {e}"
    return None
