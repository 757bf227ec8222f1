#!/usr/bin/env python3
"""Peer for the sliding chunk attention benchmark: PyTorch's scaled_dot_product_attention
(FlashAttention on an H100) at the Gecko-7B head shape (B = 1, H = 4, dk = 256, dv = 2048,
C = 2048, bf16), with the value dim split into eight 256-wide slices, because FlashAttention takes
head dims up to 256 for q, k and v alike: each slice recomputes Q K^T and the softmax.

The sliding chunk pattern without a dense mask: chunk 0 attends causally to itself (is_causal);
chunks 1.. attend to the window [previous chunk; own chunk] with a lower-right causal mask
(query i of the chunk sees window keys j <= i + C), i.e. all of the previous chunk and its own
chunk causally. RoPE (every head) is applied once, outside the slices; the logit scale is 1 as in
gecko's benchmark. A self-check on a small shape compares the result with a dense masked softmax.

Timed with CUDA events, median of 10 after 3 warm-ups; TFLOP/s on the same useful FLOPs as
gecko_bench's sliding_chunk_attention rows (forward 2 * visible pairs * (dk + dv) * H, backward
2.5x that).

usage: python3 sca_sdpa_slices.py OUT.json [L ...]
"""
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from torch_peer import rope, timed

H, DK, DV, C, SLICE = 4, 256, 2048, 2048, 256


def visible_pairs(L, c):
    n = L // c
    return n * c * (c + 1) // 2 + (n - 1) * c * c



def rope_tables(L, d, device):
    pos = torch.arange(L, device=device, dtype=torch.float32)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
    ang = pos[:, None] * inv[None]
    return ang.cos()[None, :, None], ang.sin()[None, :, None]


def sliding_chunk_attention(q, k, v, cos, sin, c, slice_width):
    """q, k: [1, L, H, dk]; v: [1, L, H, dv] -> [1, L, H, dv]."""
    _, L, h, dk = q.shape
    dv = v.shape[-1]
    n = L // c
    q, k = rope(q, cos.to(q.dtype), sin.to(q.dtype)), rope(k, cos.to(k.dtype), sin.to(k.dtype))
    qc = q.view(n, c, h, dk).transpose(1, 2)  # [n, H, C, dk]
    kc = k.view(n, c, h, dk).transpose(1, 2)
    vc = v.view(n, c, h, dv).transpose(1, 2)
    kw = torch.cat([kc[:-1], kc[1:]], dim=2)  # [n - 1, H, 2C, dk]: previous chunk, own chunk
    vw = torch.cat([vc[:-1], vc[1:]], dim=2)
    mask = causal_lower_right(c, 2 * c)
    outs = []
    for s in range(0, dv, slice_width):
        first = F.scaled_dot_product_attention(qc[:1], kc[:1], vc[:1, ..., s:s + slice_width], is_causal=True,
                                               scale=1.0)
        parts = [first]
        if n > 1:
            parts.append(F.scaled_dot_product_attention(qc[1:], kw, vw[..., s:s + slice_width], attn_mask=mask,
                                                        scale=1.0))
        outs.append(torch.cat(parts, 0))
    return torch.cat(outs, -1).transpose(1, 2).reshape(1, L, h, dv)


def dense_reference(q, k, v, cos, sin, c):
    _, L, h, _ = q.shape
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    i = torch.arange(L, device=q.device)[:, None]
    j = torch.arange(L, device=q.device)[None]
    visible = (j <= i) & (j // c >= i // c - 1)
    s = torch.einsum("bihd,bjhd->bhij", q, k).masked_fill(~visible, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v)


def self_check(device):
    torch.manual_seed(1)
    L, c, h, dk, dv = 48, 16, 2, 32, 64
    q, k, v = (torch.randn(1, L, h, d, device=device, dtype=torch.float32) * 0.5 for d in (dk, dk, dv))
    cos, sin = rope_tables(L, dk, device)
    got = sliding_chunk_attention(q, k, v, cos, sin, c, 32)
    want = dense_reference(q, k, v, cos, sin, c)
    err = ((got - want).norm() / want.norm()).item()
    if err > 1e-4:
        raise SystemExit(f"self-check failed: relative error {err:.3e}")
    return err



def main():
    path = sys.argv[1]
    lengths = [int(a) for a in sys.argv[2:]] or [4096, 16384, 65536]
    check = self_check("cuda")
    print(f"self-check against a dense masked softmax (fp32, L=48, C=16): relative error {check:.2e}", flush=True)
    rows = []
    for L in lengths:
        torch.manual_seed(0)
        q = (torch.randn(1, L, H, DK, device="cuda") * 0.25).to(torch.bfloat16).requires_grad_()
        k = (torch.randn(1, L, H, DK, device="cuda") * 0.25).to(torch.bfloat16).requires_grad_()
        v = torch.randn(1, L, H, DV, device="cuda").to(torch.bfloat16).requires_grad_()
        dout = torch.randn(1, L, H, DV, device="cuda").to(torch.bfloat16)
        cos, sin = rope_tables(L, DK, "cuda")
        fwd_flops = 2.0 * visible_pairs(L, C) * (DK + DV) * H
        backend = "flash"
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
                sliding_chunk_attention(q, k, v, cos, sin, C, SLICE)
            chosen = [SDPBackend.FLASH_ATTENTION]
        except RuntimeError:
            backend = "default (flash refused)"
            chosen = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        torch.cuda.reset_peak_memory_stats()
        with sdpa_kernel(chosen):
            with torch.no_grad():
                fwd = timed(lambda: sliding_chunk_attention(q, k, v, cos, sin, C, SLICE))

            def step():
                q.grad = k.grad = v.grad = None
                sliding_chunk_attention(q, k, v, cos, sin, C, SLICE).backward(dout)

            fb = timed(step)
        peak = torch.cuda.max_memory_allocated()
        rows.append({"L": L, "backend": backend, "forward_ms": fwd, "forward_backward_ms": fb,
                     "forward_tflops": fwd_flops / (fwd * 1e-3) / 1e12,
                     "forward_backward_tflops": 3.5 * fwd_flops / (fb * 1e-3) / 1e12, "peak_bytes": peak})
        print(f"SDPA, dv in {DV // SLICE} slices of {SLICE}, L={L} ({backend}): fwd {fwd:.3f} ms "
              f"({rows[-1]['forward_tflops']:.0f} useful TFLOP/s), fwd+bwd {fb:.3f} ms "
              f"({rows[-1]['forward_backward_tflops']:.0f}), peak {peak / 2**30:.2f} GiB", flush=True)
        del q, k, v, dout
        torch.cuda.empty_cache()
    json.dump({"peer": "sliding chunk attention by PyTorch %s SDPA, dv split into %d-wide slices" %
               (torch.__version__, SLICE), "device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
               "self_check_rel_error": check, "rows": rows}, open(path, "w"), indent=1)


if __name__ == "__main__":
    main()
