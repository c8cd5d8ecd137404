"""choose_layout: the channels-last decision and each Transpose rewrite, by structure and by numbers."""
from __future__ import annotations

from graphs import Builder, check_pass, ops
from kiln.passes.choose_layout import choose_layout, conv_share, decide_layout, remove_layout_transposes
from kiln.passes.pipeline import optimize

TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def _conv_nhwc(b: Builder, x, cin: int, cout: int, **attrs):
    """What an NHWC exporter writes for one conv: T -> Conv -> T back."""
    y = b.op("Conv", b.op("Transpose", x, perm=TO_NCHW), b.rand(cout, cin, 3, 3), b.rand(cout), pads=[1, 1, 1, 1],
             **attrs)
    return b.op("Transpose", y, perm=TO_NHWC)


def _transposes(b: Builder) -> int:
    return ops(b.graph).get("Transpose", 0)


def _reads(node_op: str, b: Builder) -> list[str]:
    """The ops that produce the inputs of the first `node_op` node."""
    node = next(n for n in b.graph.nodes if n.op == node_op)
    return [v.producer().op if v is not None and v.producer() else "-" for v in node.inputs]


def test_unary_between_convs_lets_the_pair_cancel():
    b = Builder()
    x = b.input("x", (1, 6, 5, 3))
    h = b.op("Relu", _conv_nhwc(b, x, 3, 4))
    b.output(_conv_nhwc(b, h, 4, 4))
    assert check_pass(remove_layout_transposes, b, rtol=1e-5, atol=1e-5)
    assert _transposes(b) == 2                       # the graph's own input and output
    assert _reads("Relu", b) == ["Conv"]
    assert _reads("Conv", b)[0] == "Transpose"


def test_sunk_transpose_keeps_the_output_name():
    b = Builder()
    x = b.input("x", (1, 4, 4, 3))
    out = b.op("Sigmoid", _conv_nhwc(b, x, 3, 2))
    b.output(out)
    name = out.name
    assert check_pass(remove_layout_transposes, b)
    assert b.graph.outputs[0].name == name and b.graph.outputs[0].producer().op == "Transpose"
    assert _reads("Sigmoid", b) == ["Conv"]


def test_binary_with_channel_constant_and_residual():
    """Add(T(conv), c[C]) takes c as [1, C, 1, 1]; Add(T(a), T(b)) becomes T(Add(a, b))."""
    b = Builder()
    x = b.input("x", (2, 5, 4, 3))
    y = b.op("Add", _conv_nhwc(b, x, 3, 4), b.rand(4))          # per-channel bias in NHWC
    y = b.op("Mul", y, b.const(0.5))                           # a scalar
    z = b.op("Add", _conv_nhwc(b, x, 3, 4), y)                 # residual, both transposed
    b.output(b.op("Relu", z))
    before = _transposes(b)
    assert check_pass(remove_layout_transposes, b, rtol=1e-5, atol=1e-5)
    assert before == 4 and _transposes(b) == 3                # two inputs' T and one output T
    bias = next(n for n in b.graph.nodes if n.op == "Add").input(1)
    assert bias.shape == (1, 4, 1, 1)
    assert ops(b.graph)["Relu"] == 1 and _reads("Relu", b) == ["Add"]


def test_concat_axis_follows_the_permutation():
    b = Builder()
    x = b.input("x", (1, 4, 4, 3))
    c = b.op("Concat", _conv_nhwc(b, x, 3, 2), _conv_nhwc(b, x, 3, 5), axis=3)
    b.output(_conv_nhwc(b, c, 7, 2))
    assert check_pass(remove_layout_transposes, b, rtol=1e-5, atol=1e-5)
    concat = next(n for n in b.graph.nodes if n.op == "Concat")
    assert concat.attrs["axis"] == 1 and _reads("Concat", b) == ["Conv", "Conv"]
    assert _transposes(b) == 3                   # one on x per conv, one on the output


def test_pad_moves_its_pads():
    b = Builder()
    x = b.input("x", (1, 5, 6, 3))
    y = b.op("Pad", _conv_nhwc(b, x, 3, 2), b.const([0, 1, 2, 0, 0, 3, 0, 0], dtype="int64"))
    b.output(_conv_nhwc(b, y, 2, 2))
    assert check_pass(remove_layout_transposes, b, rtol=1e-5, atol=1e-5)
    pad = next(n for n in b.graph.nodes if n.op == "Pad")
    assert list(pad.input(1).const) == [0, 0, 1, 2, 0, 0, 3, 0] and _reads("Pad", b)[0] == "Conv"


def test_global_pool_as_reduce_mean_reads_the_conv():
    """Keras GlobalAveragePooling2D: ReduceMean(T(conv), [1, 2], keepdims=0) -> ReduceMean(conv, [2, 3])."""
    b = Builder()
    x = b.input("x", (2, 5, 6, 3))
    y = _conv_nhwc(b, x, 3, 4)
    b.output(b.op("ReduceMean", y, b.const([1, 2], dtype="int64"), keepdims=0))
    assert check_pass(remove_layout_transposes, b, rtol=1e-5, atol=1e-5)
    r = next(n for n in b.graph.nodes if n.op == "ReduceMean")
    assert list(r.input(1).const) == [2, 3] and _reads("ReduceMean", b)[0] == "Conv"
    assert _transposes(b) == 1


def test_reduce_keepdims_sinks():
    b = Builder()
    x = b.input("x", (2, 5, 6, 3))
    y = b.op("ReduceMax", _conv_nhwc(b, x, 3, 4), b.const([3], dtype="int64"), keepdims=1)
    b.output(b.op("Transpose", y, perm=TO_NCHW))
    assert check_pass(remove_layout_transposes, b)
    assert list(next(n for n in b.graph.nodes if n.op == "ReduceMax").input(1).const) == [1]
    assert _transposes(b) == 1


def test_left_alone():
    """Attention's [0, 2, 1, 3], a Transpose another op also reads, and a non-constant
    operand that is not transposed: nothing sinks."""
    b = Builder()
    q = b.input("q", (2, 4, 3, 8))
    t = b.op("Transpose", q, perm=[0, 2, 1, 3])
    a = b.op("Mul", t, b.const(0.5))
    x = b.input("x", (1, 4, 4, 3))
    n = b.op("Transpose", x, perm=TO_NCHW)
    r = b.op("Relu", n)
    y = b.input("y", (1, 3, 4, 4))
    s = b.op("Add", b.op("Transpose", b.input("z", (1, 4, 4, 3)), perm=TO_NCHW), y)
    b.output(a, r, n, s)
    assert not check_pass(remove_layout_transposes, b)
    assert _transposes(b) == 3


def test_decision_counts_convs_and_flops():
    b = Builder()
    x = b.input("x", (1, 3, 8, 8))
    for _ in range(4):
        x = b.op("Relu", b.op("Conv", x, b.rand(3, 3, 3, 3), pads=[1, 1, 1, 1]))
    b.output(x)
    assert decide_layout(b.graph) == "nhwc"
    assert choose_layout(b.graph) and b.graph.layout == "nhwc"
    assert not choose_layout(b.graph)              # a second run changes nothing

    b = Builder()                                  # one small conv beside a big matmul
    img = b.input("img", (1, 3, 4, 4))
    c = b.op("Conv", img, b.rand(2, 3, 1, 1))
    h = b.op("MatMul", b.input("h", (64, 128)), b.rand(128, 128))
    b.output(c, h)
    convs, share = conv_share(b.graph)
    assert convs == 1 and share < 0.01 and decide_layout(b.graph) == "nchw"
    assert not choose_layout(b.graph)

    b = Builder()                                  # one conv doing nearly all the work
    c = b.op("Conv", b.input("img", (1, 16, 16, 16)), b.rand(16, 16, 3, 3), pads=[1, 1, 1, 1])
    b.output(b.op("Relu", c))
    assert decide_layout(b.graph) == "nhwc"

    b = Builder()                                  # 1-D convolutions are not a channels-last region
    y = b.input("s", (1, 4, 32))
    for _ in range(4):
        y = b.op("Conv", y, b.rand(4, 4, 3), pads=[1, 1])
    b.output(y)
    assert decide_layout(b.graph) == "nchw"


def test_pipeline_on_an_nhwc_export_fuses_every_conv():
    """The whole pipeline: an NHWC ResNet-style block comes out as FusedConvs in NCHW,
    with one Transpose at each end."""
    b = Builder()
    x = b.input("x", (1, 6, 6, 4))
    h = b.op("Relu", _conv_nhwc(b, x, 4, 4))
    bn = b.op("BatchNormalization", b.op("Transpose", h, perm=TO_NCHW), b.rand(4), b.rand(4), b.rand(4),
              b.rand(4, positive=True))
    h2 = b.op("Transpose", bn, perm=TO_NHWC)
    y = b.op("Relu", b.op("Add", _conv_nhwc(b, h2, 4, 4), h))
    b.output(b.op("ReduceMean", y, b.const([1, 2], dtype="int64"), keepdims=0))
    runs = []
    check_pass(lambda g: runs.extend(optimize(g)) or False, b, rtol=1e-4, atol=1e-5)
    assert ("choose_layout", True) in runs
    counts = ops(b.graph)
    assert counts.get("Transpose", 0) == 1 and counts.get("BatchNormalization", 0) == 0
    assert counts["kiln::FusedConv"] == 2
