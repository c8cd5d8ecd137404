"""LayerNorm kernels on [4096,768] / [6304,768] fp16 replayed in CUDA graphs (launch cost excluded):
torch's LayerNorm and add+LayerNorm vs kiln's Triton LayerNorm / AddLayerNorm configs vs a minimal kernel.

    PYTHONPATH=src python benchmarks/kernels_norm_graphs.py
"""
import sys

import torch
import triton
import triton.language as tl
sys.path.insert(0, "src")
from kiln.kernels.triton import norm

@triton.jit
def _ln_min(X, R, W, B, Y, S, N, eps, BLOCK: tl.constexpr, RES: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < N
    x = tl.load(X + row * N + cols, mask=m, other=0.0).to(tl.float32)
    if RES:
        x = (x + tl.load(R + row * N + cols, mask=m, other=0.0).to(tl.float32)).to(tl.float16)
        tl.store(S + row * N + cols, x, mask=m)
        x = x.to(tl.float32)
    mean = tl.sum(x, 0) / N
    d = tl.where(m, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, 0) / N + eps)
    w = tl.load(W + cols, mask=m).to(tl.float32); b = tl.load(B + cols, mask=m).to(tl.float32)
    tl.store(Y + row * N + cols, (d * rstd * w + b).to(tl.float16), mask=m)

def graph_ms(fn, n=50):
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3): fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n): fn()
    for _ in range(2): g.replay()
    torch.cuda.synchronize()
    a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
    a.record(); g.replay(); b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b) / n

for rows in (4096, 6304):
    x = torch.randn(rows, 768, device="cuda", dtype=torch.float16); r = torch.randn_like(x)
    w = torch.randn(768, device="cuda", dtype=torch.float16); bb = torch.randn_like(w)
    y = torch.empty_like(x); sm = torch.empty_like(x)
    mb = x.numel() * 2 / 1e6
    t = graph_ms(lambda: torch.nn.functional.layer_norm(x, (768,), w, bb))
    print(f"rows {rows}: torch LN {t*1000:.1f} us ({2 * mb / t:.0f} GB/s)")
    t = graph_ms(lambda: torch.nn.functional.layer_norm(x + r, (768,), w, bb))
    print(f"rows {rows}: torch add+LN {t*1000:.1f} us")
    for cfg in norm.CONFIGS:
        t = graph_ms(lambda: norm.layer_norm(x, w, bb, config=cfg))
        t2 = graph_ms(lambda: norm.add_layer_norm(x, r, w, bb, config=cfg, n_outputs=1))
        print(f"rows {rows}: kiln LN {cfg} {t*1000:.1f} us  addLN(y) {t2*1000:.1f} us")
    for nw in (1, 2, 4, 8):
        t = graph_ms(lambda: _ln_min[(rows,)](x, r, w, bb, y, sm, 768, 1e-5, BLOCK=1024, RES=False, num_warps=nw))
        t2 = graph_ms(lambda: _ln_min[(rows,)](x, r, w, bb, y, sm, 768, 1e-5, BLOCK=1024, RES=True, num_warps=nw))
        print(f"rows {rows}: minimal LN w{nw} {t*1000:.1f} us ({2 * mb / t:.0f} GB/s)  add+LN+sum {t2*1000:.1f} us")
