"""ResNet-50's stem convolution (7x7/2 over 3 channels, 64 out, batch 64, channels-last) three ways:
cuDNN fp16 (what kiln::FusedConv.cudnn_nhwc and torch run), kiln's Triton fp16 convolution
(kernels/triton/conv.py, every config of its space) and kiln's int8 and fp8 kiln::QConv
(kernels/triton/qconv.py, every config; the ROWS walk's and the folded space-to-depth ones, S2D=1,
qconv_s2d.py; and S2D_TRIALS, persistent ones not in the spaces), and on Hopper the folded conv on
the warp-specialized Gluon kernel (kernels/gluon/qconv_s2d.py, every config); then the framed copy
of an NCHW input that the Triton ones start with (kernels/triton/frame.py), plain and folded.

    PYTHONPATH=$PWD/src python3 benchmarks/kernels_stem.py [--batch 64]

Each with bias + ReLU (cuDNN both ways kiln::FusedConv.cudnn_nhwc may run it: conv2d with bias
then an in-place ReLU, its "torch" epilogue, and cuDNN's fused conv+bias+ReLU, its "cudnn" one). The Triton fp16 outputs are checked against cuDNN's fp32 result first
(rounded to fp16: the fp16 tolerance); us per call, CUDA graphs of 5 calls replayed, median of 20.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernels_qconv import bench  # noqa: E402
from kiln.compiler.tolerance import mismatch  # noqa: E402
from kiln.kernels.triton import conv as tconv  # noqa: E402
from kiln.kernels.triton import qconv as tq  # noqa: E402
from kiln.kernels.triton.frame import frame  # noqa: E402
from kiln.kernels.triton.qconv_plan import FLOAT_CONFIGS  # noqa: E402
from kiln.kernels.triton.qconv_plan import FP8_S2D_CONFIGS, INT8_S2D_CONFIGS  # noqa: E402


# S2D configs not in the spaces: the WINDOW walk persistent (the next tile's loads overlap this
# tile's epilogue; the stem's K is 4 steps of 64 and every tile writes 128 pixels x 64 channels),
# with one or two programs per SM, and a 256-row tile.
_PERSISTENT_S2D = {"BLOCK_K": 64, "GROUP_M": 8, "num_stages": 4, "TMA": 1, "PERSISTENT": 1, "S2D": 1}
S2D_TRIALS = [{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, **_PERSISTENT_S2D},
              {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, **_PERSISTENT_S2D, "SM_PROGRAMS": 2},
              {"BLOCK_M": 256, "BLOCK_N": 64, "num_warps": 8, **_PERSISTENT_S2D}]


def median_us(fn) -> float:
    """us per call, replayed in a CUDA graph (kernels_qconv.bench): a Python launch with TMA
    descriptors takes longer than the GPU hold of an eager timer, which then timed the host."""
    return 1000 * bench(fn)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    cl = torch.channels_last
    x = torch.randn(args.batch, 3, 224, 224, device="cuda").half().contiguous(memory_format=cl)
    w = (torch.randn(64, 3, 7, 7, device="cuda") * 0.1).half().contiguous(memory_format=cl)
    b = torch.randn(64, device="cuda").half()
    attrs = dict(pads=[3, 3, 3, 3], strides=[2, 2])
    want = F.conv2d(x.float(), w.float(), b.float(), stride=2, padding=3).relu_()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; stem [{args.batch}, 3, 224, 224] -> 64 x 112 x 112")
    print(f"  cuDNN fp16 conv+bias, ReLU in place   {median_us(lambda: F.conv2d(x, w, b, stride=2, padding=3).relu_()):8.1f} us")
    fused = median_us(lambda: torch.cudnn_convolution_relu(x, w, b, [2, 2], [3, 3], [1, 1], 1))
    print(f"  cuDNN fp16 fused conv+bias+ReLU       {fused:8.1f} us")
    for i, cfg in enumerate([*FLOAT_CONFIGS, *INT8_S2D_CONFIGS[:2]]):     # fp16 folded too (no tactic has it)
        def run(cfg=cfg):
            return tconv.conv(x, w, b, None, activation="Relu", config=cfg, **attrs)
        try:
            why = mismatch(run(), want.half(), "kiln::FusedConv")  # fp16 tolerance against fp32 math
            print(f"  triton fp16 cfg {i} {cfg}: {median_us(run):8.1f} us  {'OK' if why is None else 'MISMATCH ' + why}")
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"  triton fp16 cfg {i} {cfg}: FAILED {type(exc).__name__}: {str(exc)[:160]}")
    x8 = (x.float() * 8).clamp(-100, 100).to(torch.float8_e4m3fn)
    w8 = (w.float() * 80).clamp(-100, 100).to(torch.float8_e4m3fn)
    xs = torch.tensor(0.125, device="cuda", dtype=torch.float16)
    ws = torch.full((64,), 0.0125, device="cuda", dtype=torch.float16)
    os_ = torch.tensor(0.05, device="cuda", dtype=torch.float16)
    quantized("fp8", x8, w8, xs, ws, b, os_, 17, [*tq.FP8_CONFIGS, *FP8_S2D_CONFIGS,
              *({**c, "FP8_ACC": 0} for c in S2D_TRIALS)], attrs)
    gluon_s2d = _gluon_s2d()
    xi = (x.float() * 40).round().clamp(-127, 127).to(torch.int8).contiguous(memory_format=cl)
    wi = (w.float() * 400).round().clamp(-127, 127).to(torch.int8).contiguous(memory_format=cl)
    xsi = torch.tensor(0.025, device="cuda", dtype=torch.float16)
    wsi = torch.full((64,), 0.0025, device="cuda", dtype=torch.float16)
    quantized("int8", xi, wi, xsi, wsi, b, os_, 3, [*tq.INT8_CONFIGS, *INT8_S2D_CONFIGS, *S2D_TRIALS], attrs)
    if gluon_s2d is not None:
        qconv_s2d, configs = gluon_s2d
        quantized("fp8 gluon s2d", x8, w8, xs, ws, b, os_, 17, configs, attrs, qconv_s2d)
        quantized("int8 gluon s2d", xi, wi, xsi, wsi, b, os_, 3, configs, attrs, qconv_s2d)
    framing(x.contiguous(), x8.contiguous())


def _gluon_s2d():  # noqa: ANN202 - (launcher, configs) or None
    """The Gluon stem's launcher and configs where this GPU and Triton run them (Hopper, Gluon)."""
    from kiln.kernels import gluon
    if not gluon.available() or torch.cuda.get_device_capability()[0] != 9:
        return None
    from kiln.kernels.gluon.qconv_s2d import S2D_CONFIGS, qconv_s2d
    return qconv_s2d, S2D_CONFIGS


def quantized(name: str, x, w, xs, ws, b, os_, out_dtype: int, configs, attrs, fn=None) -> None:  # noqa: ANN001
    """Every config of a QConv space on the stem, 8-bit output: us per call, and the largest
    difference in output codes from the reference kiln::QConv's (computed on the CPU). `fn`: the
    launcher (kiln::QConv's contract), Triton's qconv by default."""
    from kiln.kernels.reference.quantized import qconv as reference
    cpu = [t.cpu() for t in (x, w, xs, ws, b, os_)]
    want = reference(cpu[0], cpu[1], cpu[2], None, cpu[3], None, cpu[4], None, cpu[5], None, activation="Relu",
                     out_dtype=out_dtype, **attrs).float()
    for i, cfg in enumerate(configs):
        def run(cfg=cfg):
            return (fn or tq.qconv)(x, w, xs, None, ws, None, b, None, os_, None, activation="Relu",
                                    out_dtype=out_dtype, config=cfg, **attrs)
        try:
            diff = float((run().cpu().float() - want).abs().max())
            print(f"  kiln {name} QConv cfg {i} {cfg}: {median_us(run):8.1f} us  max |diff| to the reference {diff:g}")
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"  kiln {name} QConv cfg {i} {cfg}: FAILED {type(exc).__name__}: {str(exc)[:200]}")


def framing(x16: torch.Tensor, x8: torch.Tensor) -> None:
    """The ROWS walk's framed copy of an NCHW input (as the engine's stem gets it): one Triton pass
    against torch's zeros + strided copy."""
    def by_torch(x: torch.Tensor) -> torch.Tensor:
        bits = torch.uint8 if x.element_size() == 1 else x.dtype
        out = torch.zeros((x.shape[0], 230, 230, 4), dtype=bits, device=x.device).permute(0, 3, 1, 2)
        out[:, :3, 3:227, 3:227].copy_(x.view(bits))
        return out
    for name, x in (("fp16", x16), ("fp8", x8)):
        got = frame(x, 4, 230, 230, 3, 3)
        same = torch.equal(got.view(by_torch(x).dtype), by_torch(x))
        print(f"  framing {name} NCHW input: triton {median_us(lambda: frame(x, 4, 230, 230, 3, 3)):6.1f} us, "
              f"folded 2x2 {median_us(lambda: frame(x, 4, 230, 230, 3, 3, fold=2)):6.1f} us, "
              f"torch zeros + copy {median_us(lambda: by_torch(x)):6.1f} us  {'OK' if same else 'MISMATCH'}")


if __name__ == "__main__":
    main()
