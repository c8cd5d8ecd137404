"""What ONNX Runtime's own quantization costs a transformer whose attention mask is added as -3.4e38,
and what kiln's erased-tensor warning (precision/erasing_scales.py) gives back: the model quantized
by quantize_static (QDQ, QInt8, as benchmarks/qdq_ort.py does), then again with the nodes the
warning names left in float; each run by ONNX Runtime on the CPU against the float model on the
same evaluation samples (cosine per sample). kiln is not involved in the numbers: they are the
quantized models' own accuracy.

    PYTHONPATH=src python benchmarks/erased_attention.py [--model bert_base] [--samples 8]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import models, samples  # noqa: E402
from benchmarks.accuracy_metrics import row_cosines  # noqa: E402
from benchmarks.qdq_ort import ort_qdq  # noqa: E402
from kiln.onnx.importer import import_model  # noqa: E402
from kiln.onnx.load import load_model  # noqa: E402
from kiln.precision.erasing_scales import erasing_quantizers, nodes_to_exclude  # noqa: E402


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(models.MODELS), default="bert_base")
    ap.add_argument("--samples", type=int, default=8, help="evaluation samples")
    ap.add_argument("--calib-samples", type=int, default=32)
    args = ap.parse_args()
    model = models.MODELS[args.model](0)
    path = models.export_onnx(model, Path("/tmp/bench"))
    calib = samples.calibration_feeds(model, args.calib_samples, args.calib_samples, 0)
    evals = samples.make(model, args.samples, 0, "evaluation")
    feeds = {n: evals[n][:args.samples].numpy() for n in model.input_names}
    folder = Path(tempfile.mkdtemp(prefix="kiln-erased-"))
    reference = ort.InferenceSession(str(path)).run(None, feeds)[0]
    first = ort_qdq(path, calib, "QInt8", folder / "as_quantized")
    found = erasing_quantizers(import_model(load_model(str(first))))
    names = nodes_to_exclude(found)
    print(f"{args.model}: {len(found)} erasing QuantizeLinear nodes (largest scale "
          f"{max((s for _, s in found), default=0):.4g}); nodes to exclude: {len(names)}")
    second = ort_qdq(path, calib, "QInt8", folder / "excluded", exclude=names or None)
    print(f"  left after excluding them: {len(erasing_quantizers(import_model(load_model(str(second)))))}")
    for label, quantized in (("as quantized", first), ("warning's nodes excluded", second)):
        out = ort.InferenceSession(str(quantized)).run(None, feeds)[0]
        cos = row_cosines(out, reference)
        print(f"  {label:26s} cosine to the float model min {cos.min():.5f} mean {cos.mean():.5f}")
    print(f"  --exclude {','.join(names)}")


if __name__ == "__main__":
    main()
