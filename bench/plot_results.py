#!/usr/bin/env python3
"""Draws the block and streaming plots from recorded JSON results (needs matplotlib).

  block_time_vs_length.png     Gecko block forward and forward+backward (gecko_bench BM_block rows),
                               the Llama2-7B PyTorch peer of the same device session, and the
                               authors' recorded H100 times (../shared/PERFORMANCE.md), vs L.
  decode_latency_vs_context.png  one-token decode step, prefill time per token and device memory
                               vs context (gecko_stream_long_context --json).

usage: python3 bench/plot_results.py --bench B.json --peer P.json --stream S.json --out DIR
"""
import argparse
import json
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The authors' block on an H100 (PERFORMANCE.md): L -> (forward ms, forward+backward ms).
AUTHORS_BLOCK = {4096: (7.07, 23.09), 16384: (28.81, 92.76), 32768: (60.15, 186.89)}


def block_rows(bench):
    fwd, fwd_bwd = {}, {}
    for b in bench["benchmarks"]:
        m = re.match(r"BM_block/(fwd|fwd_bwd)_bf16/L:(\d+)", b["name"])
        if not m:
            continue
        ms = b.get("median_ms", b["real_time"])
        (fwd if m.group(1) == "fwd" else fwd_bwd)[int(m.group(2))] = ms
    return fwd, fwd_bwd


def plot_block(bench, peer, card, out):
    fwd, fwd_bwd = block_rows(bench)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for data, style, label in ((fwd_bwd, "o-", "gecko fwd+bwd"), (fwd, "o--", "gecko fwd")):
        xs = sorted(data)
        ax.plot(xs, [data[x] for x in xs], style, color="tab:green", label=label)
    if peer:
        rows = sorted(peer["rows"], key=lambda r: r["L"])
        ax.plot([r["L"] for r in rows], [r["forward_backward_ms"] for r in rows], "s-", color="tab:blue",
                label="Llama2-7B block (PyTorch SDPA) fwd+bwd")
        ax.plot([r["L"] for r in rows], [r["forward_ms"] for r in rows], "s--", color="tab:blue",
                label="Llama2-7B block fwd")
    xs = sorted(AUTHORS_BLOCK)
    ax.plot(xs, [AUTHORS_BLOCK[x][1] for x in xs], "^-", color="tab:red", label="authors' block fwd+bwd (recorded)")
    ax.plot(xs, [AUTHORS_BLOCK[x][0] for x in xs], "^--", color="tab:red", label="authors' block fwd (recorded)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L (batch 1)")
    ax.set_ylabel("time per block (ms)")
    ax.set_title(f"Gecko block, 7B shapes, bf16, {card}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def plot_stream(stream, out):
    reps = sorted(stream["reports"], key=lambda r: r["context"])
    ctx = [r["context"] for r in reps]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    step = "decode step, CUDA graph" if stream.get("graph_steps", 0) > 0 else "decode step"
    ax.plot(ctx, [r["decode_step_us"] / 1000 for r in reps], "o-", color="tab:green", label=f"{step} (ms/token)")
    ax.plot(ctx, [r["prefill_us_per_token"] / 1000 for r in reps], "s-", color="tab:blue",
            label="chunked prefill (ms/token)")
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("context (tokens already streamed)")
    ax.set_ylabel("ms per token")
    ax2 = ax.twinx()
    ax2.plot(ctx, [r["device_mib"] / 1024 for r in reps], "x:", color="gray", label="device memory in use (GiB)")
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("GiB")
    ax.set_title(f"Gecko block streaming, 7B shapes, bf16, {stream['device']}")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="center right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench")
    ap.add_argument("--peer")
    ap.add_argument("--stream")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.bench:
        bench = json.load(open(a.bench))
        peer = json.load(open(a.peer)) if a.peer else None
        card = bench.get("context", {}).get("card", bench.get("context", {}).get("device", "GPU"))
        plot_block(bench, peer, card, os.path.join(a.out, "block_time_vs_length.png"))
    if a.stream:
        plot_stream(json.load(open(a.stream)), os.path.join(a.out, "decode_latency_vs_context.png"))


if __name__ == "__main__":
    main()
