#!/usr/bin/env python3
"""Where one block iteration's GPU time goes, from an Nsight Compute CSV of kernel durations.

Produce the CSV on the GPU machine (one warm iteration of the benchmark, see bench_common.cuh):
  GECKO_PROFILE_ONE=1 ncu --profile-from-start off --clock-control none --cache-control none \
      --metrics gpu__time_duration.sum --csv ./gecko_bench \
      --benchmark_filter='BM_block/fwd_bwd_bf16/L:32768' > ncu.csv
then: python3 bench/ncu_breakdown.py ncu.csv

Kernels run one at a time under the profiler (and start cooler, so GEMMs clock higher than in a
back-to-back run): read the shares, not the absolute sum, against the benchmark's own time.
cuBLASLt kernels (nvjet_*) count for the attention or the working memory when kernels of that op
surround them, and as projections otherwise.
"""
import collections
import csv
import io
import re
import sys

# Op owning a kernel, from its name (the namespace of our kernels).
OPS = ["sliding_chunk_attention", "working_memory", "cema", "timestep_norm", "group_norm", "qk_views",
       "gated_combine", "swiglu", "linear", "layers"]


def op_of(name):
    for op in OPS:
        if op + "::" in name:
            return op
    return None


def main(path):
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header = rows[0]
    name_i, value_i, unit_i = header.index("Kernel Name"), header.index("Metric Value"), header.index("Metric Unit")
    scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
    kernels = [(r[name_i], float(r[value_i].replace(",", "")) * scale.get(r[unit_i], 1.0))
               for r in rows[1:] if len(r) == len(header)]
    ops = [op_of(n) for n, _ in kernels]
    by_op, by_kernel = collections.Counter(), collections.Counter()
    for i, (name, us) in enumerate(kernels):
        op = ops[i]
        if name.startswith("nvjet"):  # cuBLASLt: inside an op when the kernels on both sides are that op's
            before = next((ops[j] for j in range(i - 1, -1, -1) if ops[j]), None)
            after = next((ops[j] for j in range(i + 1, len(kernels)) if ops[j]), None)
            inside = before == after and before in ("sliding_chunk_attention", "working_memory")
            op = (before if inside else "projections") + " (cuBLASLt)"
        by_op[op or "other"] += us
        short = re.sub(r"<.*", "", re.sub(r"^void ", "", name))
        by_kernel[short] += us
    total = sum(us for _, us in kernels)
    print(f"{len(kernels)} kernels, {total / 1e3:.2f} ms of kernel time")
    for op, us in by_op.most_common():
        print(f"  {us / 1e3:8.2f} ms  {100 * us / total:5.1f}%  {op}")
    print("largest kernels:")
    for k, us in by_kernel.most_common(15):
        print(f"  {us / 1e3:8.2f} ms  {k}")


if __name__ == "__main__":
    main(sys.argv[1])
