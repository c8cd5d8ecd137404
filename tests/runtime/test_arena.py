"""The CUDA graphs' activation arena: reserved at the liveness plan's peak of each captured
shape, shared by every shape, released with the engine; off the GPU there is none."""
import gc

import numpy as np
import pytest
import torch
import onnx
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.config import BuildConfig, Profile

WIDTH = 1024  # fp32 rows of 4 KiB: from batch 2048 on every activation is 8 MiB or more and the plan's peak
# is above 10 MiB, where torch's allocator rounds blocks to 2 MiB (smaller ones get 20 MiB segments)


def _chain() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])
    inits, nodes, prev = [], [], "x"
    for i in range(4):
        w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == 3 else f"h{i}"
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Relu" if i < 3 else "Neg", [f"m{i}"], [out], name=f"act{i}")]
        prev = out
    graph = helper.make_graph(nodes, "chain", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _engine(device: str) -> kiln.Engine:
    profile = Profile.from_ranges({"x": ([1024, WIDTH], [2048, WIDTH], [4096, WIDTH])})
    return kiln.build(_chain(), BuildConfig(device=device, precision="fp32", tune=False, profiles=(profile,)))


def test_no_arena_off_the_gpu() -> None:
    engine = _engine("cpu")
    engine(x=np.ones((1024, WIDTH), np.float32))
    assert engine.arena is None and engine.plan.memory.peak_bytes > 0


@pytest.mark.gpu
def test_arena_holds_each_captured_shape_at_its_planned_peak() -> None:
    engine = _engine("cuda")
    gen = torch.Generator().manual_seed(0)
    feeds = {b: torch.randn(b, WIDTH, generator=gen).cuda() for b in (2048, 4096)}
    engine.use_cuda_graphs = False
    eager = {b: engine.run_tensors({"x": x})["y"] for b, x in feeds.items()}
    engine.use_cuda_graphs = True

    out = engine.run_tensors({"x": feeds[2048]})["y"]
    arena = engine.arena
    assert engine.cuda_graph_status == "captured" and torch.equal(out, eager[2048])
    # At the opt shape the capture plans what the build planned, and reserved it as one block
    # (2 MiB-rounded sizes above 10 MiB): a segment of exactly that size, in use by the graph.
    assert arena["planned_bytes"] == engine.plan.memory.peak_bytes >= 16 << 20
    assert arena["reserved_bytes"] >= arena["planned_bytes"]
    segments = _segments(engine)
    assert any(size == arena["planned_bytes"] and used > 0 for _, size, used in segments)
    assert _inside(engine._graphs._graphs, segments)  # every graph output lives in the arena

    engine.run_tensors({"x": feeds[4096]})
    grown = engine.arena
    assert grown["planned_bytes"] == 2 * arena["planned_bytes"]  # every activation doubled
    # the larger shape got a block of its own peak (the first block's free half is too small for it)
    assert any(size == grown["planned_bytes"] for _, size, _ in _segments(engine))
    assert grown["reserved_bytes"] >= arena["reserved_bytes"] + grown["planned_bytes"]
    assert _inside(engine._graphs._graphs, _segments(engine))
    for b in (2048, 4096, 2048, 4096):  # the shapes share the pool: replays in any order stay exact
        assert torch.equal(engine.run_tensors({"x": feeds[b]})["y"], eager[b])
    assert engine.arena == grown  # replays allocate nothing

    torch.cuda.synchronize()
    before = torch.cuda.memory_reserved()
    del engine, out
    gc.collect()
    torch.cuda.empty_cache()
    assert before - torch.cuda.memory_reserved() >= grown["reserved_bytes"]


def _segments(engine: kiln.Engine) -> list[tuple[int, int, int]]:
    """(address, bytes, bytes in use) of each segment of the engine's arena pool."""
    return [(seg["address"], seg["total_size"], seg["allocated_size"])
            for seg in engine._graphs.arena.segments()]


def _inside(graphs, segments) -> bool:  # noqa: ANN001
    ptrs = [t.data_ptr() for g in graphs.values() for t in g.outputs]
    return bool(ptrs) and all(any(a <= p < a + size for a, size, _ in segments) for p in ptrs)
