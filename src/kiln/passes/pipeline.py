"""The optimization pipeline: which passes run, in which order, and why.

The first CLEANUP_PASSES entries are repeated until none changes the graph (at most
MAX_CLEANUP_ROUNDS rounds): folding exposes no-ops, removing no-ops exposes more
folding. The pattern passes then run once each, most specific first, so that a
general pass (epilogues, then pointwise) never swallows what a specific one owns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from kiln.ir.graph import Graph
from kiln.ir.printer import print_graph
from kiln.ir.verify import verify
from kiln.passes.choose_layout import choose_layout
from kiln.passes.eliminate_dead_code import eliminate_dead_code
from kiln.passes.fuse_add_layernorm import fuse_add_layernorm
from kiln.passes.eliminate_noops import eliminate_noops
from kiln.passes.fold_batchnorm import fold_batchnorm
from kiln.passes.fold_constants import fold_constants
from kiln.passes.fold_residual_bias import fold_residual_bias
from kiln.passes.fuse_attention import fuse_attention
from kiln.passes.fuse_epilogues import fuse_epilogues
from kiln.passes.fuse_gelu import fuse_gelu
from kiln.passes.fuse_layernorm import fuse_layernorm
from kiln.passes.fuse_pointwise import fuse_pointwise
from kiln.passes.fuse_qdq import fuse_qdq
from kiln.passes.fuse_qdq_activation import fuse_qdq_activation
from kiln.passes.fuse_qdq_bias import fuse_qdq_bias
from kiln.passes.fuse_qdq_residual import fuse_qdq_residual
from kiln.passes.fuse_softmax import fuse_softmax
from kiln.passes.gather_before_dequantize import gather_before_dequantize
from kiln.passes.gather_to_slice import gather_to_slice
from kiln.passes.integer_to_qdq import integer_to_qdq
from kiln.passes.merge_parallel_matmuls import merge_parallel_matmuls
from kiln.passes.patches_to_matmul import patches_to_matmul
from kiln.passes.refine_shapes import refine_shapes
from kiln.passes.signed_dynamic_codes import signed_dynamic_codes

Pass = Callable[[Graph], bool]

PASSES: list[tuple[str, Pass]] = [
    ("fold_constants", fold_constants),            # weights/shapes computed from constants become constants
    ("eliminate_noops", eliminate_noops),          # Identity, x*1, cancelling Transposes hide patterns
    ("eliminate_dead_code", eliminate_dead_code),  # drop what folding and bypassing orphaned
    ("refine_shapes", refine_shapes),              # dims the folded shape arithmetic fixes become static
    ("choose_layout", choose_layout),              # NHWC exports' Transpose pairs out of conv chains; channels-last?
    ("fold_batchnorm", fold_batchnorm),            # BN into Conv/Gemm weights, before epilogue fusion
    ("patches_to_matmul", patches_to_matmul),      # a ViT's patchify conv is a GEMM (after BN folding)
    ("fuse_layernorm", fuse_layernorm),            # its Sub/Pow/Div would otherwise go to pointwise
    ("fuse_gelu", fuse_gelu),                      # one Gelu node, so epilogues can take it as activation
    ("fuse_softmax", fuse_softmax),                # attention matching expects a Softmax node
    ("fuse_attention", fuse_attention),            # before epilogues, which would take its MatMuls
    ("gather_before_dequantize", gather_before_dequantize),  # a quantized table: gather codes, dequantize rows
    ("integer_to_qdq", integer_to_qdq),            # quantize_dynamic's MatMul/ConvInteger -> Cast -> Mul: on DQ
    ("fuse_qdq", fuse_qdq),                        # DQ->Conv/MatMul->[Q] to QConv/QMatMul; epilogues would take the float layer
    ("fuse_qdq_residual", fuse_qdq_residual),      # QConv -> DQ -> Add(DQ(r)) -> Q: the residual add in the conv
    ("fuse_qdq_activation", fuse_qdq_activation),  # Q(Relu(DQ(y_q))) of the layer's own parameters: its activation
    ("fuse_qdq_bias", fuse_qdq_bias),              # QMatMul -> DQ -> Add(bias) -> ... -> Q: the bias after the mid codes
    ("fuse_epilogues", fuse_epilogues),            # bias/residual/activation into Conv and MatMul
    ("fold_residual_bias", fold_residual_bias),    # a residual conv's bias joins its consumer's (no bias-add kernel)
    ("merge_parallel_matmuls", merge_parallel_matmuls),  # Q/K/V projections of one input: one wider GEMM
    ("signed_dynamic_codes", signed_dynamic_codes),  # run-time codes only int8 GEMMs read: int8 (their TMA kernels)
    ("fuse_add_layernorm", fuse_add_layernorm),    # residual add + LayerNorm in one kernel; the GEMM keeps its bias
    ("fuse_pointwise", fuse_pointwise),            # whatever element-wise work is left, in groups
    ("gather_to_slice", gather_to_slice),          # scalar-index Gathers (qkv.unbind) become views
    ("eliminate_dead_code", eliminate_dead_code),  # constants and nodes the fusions left unread
]
CLEANUP_PASSES = 4
# Refined dims let fold_constants fold the next layer's Shape arithmetic, which refines the
# next: a chain that resolves about one layer per round (BERT-base at a static batch of 1: 13
# rounds). Rounds stop as soon as none changes anything; this only bounds a runaway.
MAX_CLEANUP_ROUNDS = 48


def optimize(graph: Graph, *, dump_dir: Path | None = None,
             on_pass: Callable[[str, bool], None] | None = None) -> list[tuple[str, bool]]:
    """Run PASSES over `graph` in place; return (name, changed) for every pass run.

    With `dump_dir`, the IR is written there first (00_imported.txt) and after each
    pass run (NN_name.txt). `verify` runs after every pass, so a broken rewrite is
    reported by the pass that made it.
    """
    runs: list[tuple[str, bool]] = []
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        (dump_dir / "00_imported.txt").write_text(print_graph(graph))

    def run(name: str, fn: Pass) -> bool:
        changed = fn(graph)
        verify(graph)
        runs.append((name, changed))
        if dump_dir is not None:
            (dump_dir / f"{len(runs):02d}_{name}.txt").write_text(print_graph(graph))
        if on_pass is not None:
            on_pass(name, changed)
        return changed

    for _ in range(MAX_CLEANUP_ROUNDS):
        if not any([run(name, fn) for name, fn in PASSES[:CLEANUP_PASSES]]):
            break
    for name, fn in PASSES[CLEANUP_PASSES:]:
        run(name, fn)
    return runs
