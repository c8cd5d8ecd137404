"""Programmatic dependent launch (kernels/triton/pdl.py): when a launch asks for it, and the rule
every kernel keeps (its first statement waits for the kernel before)."""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import types

import pytest
import torch
from triton.runtime.jit import KernelInterface

import kiln.kernels.triton as kt
from kiln.kernels.triton import pdl, pointwise
from tests.kernels.compiled_child import run_compiled


def _modules() -> list[types.ModuleType]:
    return [importlib.import_module(f"kiln.kernels.triton.{m.name}") for m in pkgutil.iter_modules(kt.__path__)]


def _first_statement(source: str) -> ast.stmt:
    fn = ast.parse(inspect.cleandoc("\n" + source) if source.startswith(" ") else source).body[0]
    body = fn.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):   # the docstring
        body = body[1:]
    return body[0]


def _launched(module: types.ModuleType) -> set[str]:
    """Names of the Triton kernels the module's code launches (kernel[grid](...)), its own or imported."""
    source = inspect.getsource(module)
    jitted = {name for name, v in vars(module).items() if isinstance(v, KernelInterface)}
    return {m for m in re.findall(r"\b(\w+)\[[^\]\n]*\]\(", source) if m in jitted}


def test_cpu_tensors_launch_plainly():
    assert pdl.launch_options(torch.zeros(4)) == {}


@pytest.mark.parametrize("capability, enabled, want", [
    ((9, 0), True, {"PDL": True, "launch_pdl": True}),
    ((10, 0), True, {"PDL": True, "launch_pdl": True}),
    ((8, 9), True, {}),            # no grid dependency control before Hopper
    ((9, 0), False, {}),           # switched off (pdl.ENABLED, KILN_PDL=0)
])
def test_cuda_launches_ask_for_pdl_from_hopper_on(monkeypatch, capability, enabled, want):
    fake = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    monkeypatch.setattr(pdl, "_capable", lambda index: capability >= (9, 0))
    monkeypatch.setattr(pdl, "ENABLED", enabled)
    monkeypatch.setattr(pdl, "AVAILABLE", True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert pdl.launch_options(fake) == want


def test_the_interpreter_never_gets_pdl(monkeypatch):
    fake = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    monkeypatch.setattr(pdl, "_capable", lambda index: True)
    monkeypatch.setattr(pdl, "AVAILABLE", True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert pdl.launch_options(fake) == {}


def test_every_launched_kernel_waits_first():
    """Each kernel launched in kiln.kernels.triton takes PDL and waits before anything else: a
    kernel launched with PDL that loaded or stored first could race the kernel before it."""
    checked = set()
    for module in _modules():
        for name in _launched(module):
            fn = getattr(module, name)
            assert "PDL" in fn.arg_names, f"{module.__name__}.{name} has no PDL parameter"
            first = _first_statement(inspect.getsource(fn.fn))
            assert ast.unparse(first) == "wait_for_inputs(PDL)", \
                f"{module.__name__}.{name} starts with {ast.unparse(first)!r}, not wait_for_inputs(PDL)"
            checked.add(name)
    # the kernels of the ResNet-50 and BERT engines are among them
    assert {"_qconv_kernel", "window_kernel", "_frame_kernel", "_max_pool2d_kernel", "_quantize_kernel",
            "_qgemm_kernel", "qgemm_tma_kernel", "gemm_tma_kernel", "_norm_block", "_attention_kernel",
            "_softmax_block", "_lookup"} <= checked


def test_generated_kernels_wait_first():
    source = pointwise.generate_source([["Add", ["i0", "i1"], {}]], ["float16"] * 2, [(2, 3), (2, 3)])
    fn = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "kiln_pointwise")
    assert fn.args.args[-1].arg == "PDL"
    assert ast.unparse(fn.body[0]) == "wait_for_inputs(PDL)"
    # the quantized attention's template (its constants' parameters filled in at generation)
    from kiln.kernels.triton import qdq_attention
    signature_end = qdq_attention._KERNEL.index("PDL: tl.constexpr = False):")
    assert qdq_attention._KERNEL[signature_end:].split("\n")[1].strip().startswith("wait_for_inputs(PDL)")


_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kiln.kernels.triton.pointwise_table import _lookup
sig = {"X": "*u8", "T": "*fp16", "Y": "*fp16", "numel": "i32", "BLOCK": "constexpr", "WIDE": "constexpr",
       "PDL": "constexpr"}
for on in (True, False):
    src = ASTSource(_lookup, sig, {"BLOCK": 1024, "WIDE": False, "PDL": on})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "launch_pdl": on})
    ptx = k.asm["ptx"]
    wait = ptx.find("griddepcontrol.wait")
    print(on, wait >= 0, bool(k.metadata.launch_pdl), 0 <= wait < ptx.index("ld.global"))
"""


def test_the_wait_compiles_to_griddepcontrol_for_sm90(tmp_path):
    """Compiled for sm_90 (no GPU needed; outside the interpreter, so in a child process): with
    PDL the kernel's PTX waits (griddepcontrol.wait) before its first global load and the kernel
    asks its launcher for PDL; without, neither."""
    assert run_compiled(_COMPILE, tmp_path)[:2] == ["True True True True", "False False False False"]


@pytest.mark.gpu
def test_a_chain_of_pdl_kernels_in_a_cuda_graph_is_exact():
    """Forty dependent pointwise launches captured in a CUDA graph, with PDL where the GPU has it:
    the graph's result is each step applied in order (a kernel reading before its predecessor's
    writes landed would miss an add)."""
    x = torch.arange(1 << 20, device="cuda", dtype=torch.int32)
    one = torch.ones((), device="cuda", dtype=torch.int32)
    bufs = [x.clone(), torch.empty_like(x)]

    def chain():
        for i in range(40):
            bufs[(i + 1) % 2].copy_(pointwise.pointwise(bufs[i % 2], one, program=[["Add", ["i0", "i1"], {}]]))

    chain()
    torch.cuda.synchronize()
    bufs[0].copy_(x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain()
    bufs[0].copy_(x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(bufs[0], x + 40)
