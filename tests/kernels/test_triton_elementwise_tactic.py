"""A lone element-wise op's Triton tactic (tactics/elementwise.py) against its reference op: the
one-op program, absent optional inputs, attributes (Cast's `to`), and which queries it takes.
CPU tests run the kernel in Triton's interpreter (tests/conftest.py) on tiny shapes."""
from __future__ import annotations


import pytest
import torch

from kiln.kernels import triton as kiln_triton
from kiln.kernels.reference import supported_ops
from kiln.tactics.elementwise import one_op_program
from kiln.tactics.registry import TacticQuery, candidates, get_tactic

pytestmark = [pytest.mark.skipif(not kiln_triton.available(), reason="Triton is not installed"),
              pytest.mark.usefixtures("kernel_device"),
              # the interpreter computes the block's masked-off lanes too (0 / 0 there): numpy warns
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def test_one_op_program_maps_given_inputs_and_keeps_absent_ones() -> None:
    assert one_op_program("Clip", [True, False, True], {}) == [["Clip", ["i0", None, "i1"], {}]]
    assert one_op_program("Cast", [True], {"to": 10}) == [["Cast", ["i0"], {"to": 10}]]


CASES = [
    ("Mul", [(4, 6, 8), (4, 6, 1)], torch.float16, {}),
    ("Div", [(4, 8), (4, 8)], torch.float32, {}),
    ("Clip", [(4, 8), (), None], torch.float16, {}),
    ("Cast", [(3, 5)], torch.int64, {"to": 10}),       # an int64 mask to float16
    ("Sqrt", [(7,)], torch.float32, {}),
]


@pytest.mark.parametrize("op, shapes, dtype, attrs", CASES, ids=[c[0] for c in CASES])
def test_lone_op_matches_its_reference(op, shapes, dtype, attrs) -> None:  # noqa: ANN001
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    inputs = []
    for shape in shapes:
        if shape is None:
            inputs.append(None)
        elif dtype == torch.int64:
            inputs.append(torch.randint(0, 2, shape, generator=g))
        else:
            inputs.append((torch.rand(shape, generator=g) + 0.5).to(dtype))
    query = TacticQuery(op, "cuda", tuple(None if t is None else str(t.dtype).removeprefix("torch.") for t in inputs),
                        attrs, tuple(None if t is None else tuple(t.shape) for t in inputs))
    assert f"{op}.triton" in [t.name for t in candidates(query)]
    got = get_tactic(f"{op}.triton").kernel(*inputs, **attrs)
    want = supported_ops()[op].fn(*inputs, **attrs)
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = {"rtol": 1e-3, "atol": 1e-3} if want.dtype == torch.float16 else {"rtol": 1e-6, "atol": 1e-6}
    torch.testing.assert_close(got.float(), want.float(), **tol)


def test_not_offered_off_the_gpu_or_for_ops_with_their_own() -> None:
    cpu = TacticQuery("Mul", "cpu", ("float32", "float32"), {}, ((4,), (4,)))
    assert "Mul.triton" not in [t.name for t in candidates(cpu)]
    q = TacticQuery("QuantizeLinear", "cuda", ("float32", "float32", "int8"), {}, ((4,), (), ()))
    assert [t.name for t in candidates(q)].count("QuantizeLinear.triton") <= 1   # its own tactic, not this one
