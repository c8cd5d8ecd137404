"""The folded residual blocks of ONNX Runtime's QDQ ResNet-50 (kiln::QConv with mid quantization,
passes/fuse_qdq_residual.py): each layer's Triton kernel (the first config of the int8 space that
runs) against the reference on random uint8 codes, with how many output steps they differ by, and
the tuner's verdict (compiler/tolerance.py) with one step allowed and with quantized_steps'.

    PYTHONPATH=src python benchmarks/qdq_layers.py [cuda|cpu] [batch]    # cpu: the reference only
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import models, samples  # noqa: E402
from benchmarks.qdq_ort import ort_qdq  # noqa: E402
from kiln.compiler.tolerance import mismatch, quantized_steps  # noqa: E402
from kiln.kernels.reference.quantized import QCONV_INPUTS  # noqa: E402
from kiln.kernels.reference.quantized import qconv as reference  # noqa: E402
from kiln.onnx.importer import import_model  # noqa: E402
from kiln.passes.pipeline import optimize  # noqa: E402


def layer_args(node, batch: int, gen: torch.Generator) -> list:  # noqa: ANN001
    """The node's constants, and random uint8 codes (channels-last) for its activations."""
    args = []
    for v in node.inputs:
        if v is None or v.is_const:
            args.append(None if v is None else torch.as_tensor(v.const))
            continue
        shape = [batch if isinstance(d, str) else d for d in v.shape]
        codes = torch.randint(0, 256, shape, generator=gen).to(torch.uint8)
        args.append(codes.contiguous(memory_format=torch.channels_last))
    return args


def main() -> None:
    dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    model = models.resnet50(0)
    path = models.export_onnx(model, Path("/tmp/bench"))
    qdq = ort_qdq(path, samples.calibration_feeds(model, 8, 8, 0), "QUInt8", Path(tempfile.mkdtemp()))
    graph = import_model(onnx.load(qdq))
    optimize(graph)
    gen = torch.Generator().manual_seed(0)
    mid = QCONV_INPUTS.index("mid_scale")
    for node in graph.nodes:
        if node.qualified_op != "kiln::QConv" or len(node.inputs) <= mid:
            continue
        args = layer_args(node, batch, gen)
        want = reference(*[None if a is None else a.to(dev) for a in args], **node.attrs).cpu()
        if dev != "cuda":
            print(node.name, "reference only", tuple(want.shape), flush=True)
            continue
        from kiln.kernels.triton import qconv as tq
        from kiln.kernels.triton.qconv_plan import INT8_CONFIGS
        got = None
        for cfg in INT8_CONFIGS:
            try:
                got = tq.qconv(*[None if a is None else a.cuda() for a in args], config=cfg, **node.attrs).cpu()
                break
            except Exception as e:  # noqa: BLE001 - report the config and go on
                print(node.name, "config failed:", type(e).__name__, str(e)[:200], flush=True)
        if got is None:
            continue
        d = (got.to(torch.int64) - want.to(torch.int64)).abs()
        steps = quantized_steps("kiln::QConv", args)
        print(node.name, tuple(want.shape), "max step", int(d.max()), "differ", int((d > 0).sum()), "of", d.numel(),
              "| allowance", steps, "| one step:", mismatch(got, want, "kiln::QConv"),
              "| allowance:", mismatch(got, want, "kiln::QConv", steps=steps), flush=True)


if __name__ == "__main__":
    main()
