"""Quantization-aware-training exports (the int8 recipe of NVIDIA's pytorch-quantization and
ModelOpt, as benchmarks/qat_export.py makes it): symmetric int8 Q/DQ on every conv's input and
weight, BatchNorm a layer of its own after the quantized conv, the residual quantized before the
add. fold_batchnorm keeps such a weight an int8 dequantization; the builder moves the
QuantizeLinear after the stem's MaxPool before it (precision/quantize_before_pool.py, as in a
calibrated build); the whole network builds into quantized layers and matches ONNX Runtime."""
from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from graphs import Builder, check_pass
from kiln.passes.fold_batchnorm import fold_batchnorm
from kiln.passes.quantized_weights import recover_int8

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.qat_export import qat_model  # noqa: E402


def _quantized_conv_bn(b: Builder, gamma: list[float]):
    """Conv(DQ(Q(x)), W = DQ(q, sc)) -> BN, W folded to a float constant as fold_constants leaves it."""
    rng = np.random.default_rng(3)
    x = b.input("x", (1, 3, 5, 5))
    sx = b.const(0.05)
    xq = b.op("DequantizeLinear", b.op("QuantizeLinear", x, sx, b.const(0, dtype="int8")), sx, b.const(0, dtype="int8"))
    q = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.float64)
    q[:, 0, 0, 0] = 127                                     # each channel's largest code, as a max calibrator makes it
    sc = rng.uniform(0.001, 0.01, 4).astype(np.float32)
    w = (q * sc.astype(np.float64)[:, None, None, None]).astype(np.float32)
    conv = b.op("Conv", xq, b.const(w), pads=[1, 1, 1, 1])
    stats = [np.asarray(gamma, np.float32), rng.standard_normal(4).astype(np.float32),
             rng.standard_normal(4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)]
    return q, sc, b.op("BatchNormalization", conv, *(b.const(s) for s in stats), epsilon=1e-5), stats


def test_batchnorm_folds_into_a_quantized_weights_scales():
    gamma = [0.7, -1.3, 2.1, 0.05]
    b = Builder()
    q, sc, y, (g, _beta, _mean, var) = _quantized_conv_bn(b, gamma)
    graph = b.output(y)
    assert check_pass(fold_batchnorm, b, rtol=1e-5, atol=1e-5)
    conv = next(n for n in graph.nodes if n.op == "Conv")
    found = recover_int8(np.asarray(conv.input(1).const), 0)
    assert found is not None, "the folded weight is still an exact int8 dequantization"
    codes, scale = found
    s = g.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-5)
    assert np.array_equal(codes, (q * np.sign(s)[:, None, None, None]).astype(np.int8))   # a negative gamma flips
    assert np.array_equal(scale, (sc.astype(np.float64) * np.abs(s)).astype(np.float32))
    # A float layer (its input not dequantized) folds per element as before.
    b = Builder()
    x = b.input("x", (1, 3, 5, 5))
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    stats = [b.const(np.full(4, v, np.float32)) for v in (1.5, 0.0, 0.0, 1.0)]
    graph = b.output(b.op("BatchNormalization", b.op("Conv", x, b.const(w)), *stats))
    assert check_pass(fold_batchnorm, b)
    folded = np.asarray(next(n for n in graph.nodes if n.op == "Conv").input(1).const)
    assert np.array_equal(folded, (w.astype(np.float64) * 1.5 / np.sqrt(1 + 1e-5)).astype(np.float32))


class Bottleneck(nn.Module):
    """The bottleneck layout benchmarks/qat_export.py quantizes (conv1..3, bn1..3, downsample; found
    by its class name, as timm's and torchvision's)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else None


class _TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Bottleneck(16, 8, 32, 1), Bottleneck(32, 8, 32, 1), Bottleneck(32, 16, 64, 2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(self.layer1(x).mean((2, 3)))


def _images(seed: int, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g)      # smooth, image-like: a colour field and a ramp
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32)
    return (base + 0.5 * ramp + 0.1 * torch.randn(n, 3, 32, 32, generator=g)).float()


def test_qat_model_builds_into_quantized_layers_and_matches_onnxruntime(device):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    import kiln
    from kiln.config import BuildConfig

    torch.manual_seed(0)
    net = _TinyResNet()
    for m in net.modules():     # BN statistics away from the identity, so the fold has work to do
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    model = qat_model(net, [_images(s) for s in range(3)])
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (_images(0),), buf, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) == 12

    engine = kiln.build(proto, BuildConfig(device=device))
    steps = [s.op for s in engine.plan.steps]
    assert steps.count("kiln::QConv") == 12 and "Conv" not in steps and "kiln::FusedConv" not in steps
    assert steps.count("QuantizeLinear") <= 2     # the input's (or inside the stem) and the head's
    pool = engine.plan.steps[steps.index("MaxPool")]
    assert engine.plan.slots[pool.inputs[0]].dtype == "int8"      # the pool runs on the stem's codes
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for seed in (10, 11):
        x = _images(seed).numpy()
        got = np.asarray(engine(x=x)["y"])
        want = session.run(["y"], {"x": x})[0]
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > 0.9999, cos


def test_qat_bert_builds_as_kiln_int8_does(device):
    """The recipe on a tiny BERT (every Linear's input and weight quantized; attention left float, as
    ModelOpt's int8 default does): the Q/K/V projections merge into one QMatMul and a Split, the
    attention writes the output projection's 8-bit input, the norms their quantized outputs; the
    plan is kiln's own int8 plan of the float model, and it matches ONNX Runtime."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("transformers")
    import kiln
    from benchmarks import models
    from kiln.config import BuildConfig, Profile

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "vocab_size": 2000, "max_position_embeddings": 64}
    bert = models.bert(0, name="tiny_bert", seq=16, **tiny)
    names = bert.input_names
    batches = [tuple(models.make_inputs(bert, 2, seed=s)[n] for n in names) for s in range(3)]
    model = qat_model(bert.export_module, batches)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, batches[0], buf, dynamo=False, opset_version=17, input_names=list(names),
                          output_names=[bert.output_name])
    profile = (Profile.from_ranges(models.profile_ranges(bert, [2])),)
    engine = kiln.build(onnx.load_from_string(buf.getvalue()), BuildConfig(device=device, profiles=profile))
    steps = [s.op for s in engine.plan.steps]
    assert steps.count("kiln::QMatMul") == 8 and steps.count("Split") == 2     # 4 GEMMs a layer, Q/K/V as one
    assert "QuantizeLinear" not in steps and "MatMul" not in steps
    assert steps.count("kiln::Attention") == 2 and steps.count("kiln::NormQuantize") == 4
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    feeds = {n: v.numpy() for n, v in models.make_inputs(bert, 2, seed=9).items()}
    got = np.asarray(engine(**feeds)[bert.output_name]).reshape(-1, tiny["hidden_size"])
    want = session.run(None, feeds)[0].reshape(-1, tiny["hidden_size"])
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.9999, cos
