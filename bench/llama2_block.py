#!/usr/bin/env python3
"""Peer for the Gecko block benchmark: one Llama2-7B decoder block in PyTorch (bf16, batch 1),
causal attention through scaled_dot_product_attention (FlashAttention on an H100), timed with
CUDA events in the same device session as gecko_bench. Median of 10 after 3 warm-ups.

usage: python3 llama2_block.py OUT.json [L ...]
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

from torch_peer import rope, timed

D, H, FF = 4096, 32, 11008


class RMSNorm(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(x.dtype) * self.w



class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = RMSNorm(D), RMSNorm(D)
        self.wqkv = torch.nn.Linear(D, 3 * D, bias=False)
        self.wo = torch.nn.Linear(D, D, bias=False)
        self.w13 = torch.nn.Linear(D, 2 * FF, bias=False)
        self.w2 = torch.nn.Linear(FF, D, bias=False)

    def forward(self, x, cos, sin):
        B, L, _ = x.shape
        q, k, v = self.wqkv(self.n1(x)).view(B, L, 3, H, D // H).unbind(2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        h = x + self.wo(a.transpose(1, 2).reshape(B, L, D))
        g, u = self.w13(self.n2(h)).chunk(2, -1)
        return h + self.w2(F.silu(g) * u)



def main():
    path = sys.argv[1]
    lengths = [int(a) for a in sys.argv[2:]] or [4096, 16384, 32768]
    torch.manual_seed(0)
    blk = Block().cuda().to(torch.bfloat16)
    rows = []
    for L in lengths:
        pos = torch.arange(L, device="cuda", dtype=torch.float32)
        inv = 1.0 / (10000 ** (torch.arange(0, D // H, 2, device="cuda", dtype=torch.float32) / (D // H)))
        ang = pos[:, None] * inv[None]
        cos, sin = ang.cos().to(torch.bfloat16)[None, :, None], ang.sin().to(torch.bfloat16)[None, :, None]
        x = torch.randn(1, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn_like(x)
        torch.cuda.reset_peak_memory_stats()
        fwd = timed(lambda: blk(x, cos, sin))
        with torch.no_grad():
            fwd_nograd = timed(lambda: blk(x, cos, sin))

        def step():
            y = blk(x, cos, sin)
            y.backward(dy)

        fb = timed(step)
        peak = torch.cuda.max_memory_allocated()
        rows.append({"L": L, "forward_ms": fwd_nograd, "forward_autograd_ms": fwd, "forward_backward_ms": fb,
                     "peak_bytes": peak})
        print(f"llama2 block L={L}: fwd {fwd_nograd:.2f} ms, fwd+bwd {fb:.2f} ms, peak {peak / 2**30:.2f} GiB",
              flush=True)
        del x, dy
        torch.cuda.empty_cache()
    json.dump({"peer": "Llama2-7B block, PyTorch %s, SDPA" % torch.__version__,
               "device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "rows": rows},
              open(path, "w"), indent=1)


if __name__ == "__main__":
    main()
