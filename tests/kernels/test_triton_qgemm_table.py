"""kiln::QMatMul with a code table (precision/fuse_code_table.py): the GEMM's requantized codes
looked up in 256 entries in its epilogue, as the reference looks them up after the layer; every
kernel variant (pointers, TMA, persistent), int8 and uint8 tables; the reference refuses a table
of another size or for float outputs."""
from __future__ import annotations

import pytest
import torch
from onnx import TensorProto

from kiln.kernels.reference import lookup
from kiln.kernels.reference.quantized import looked_up
from kiln.kernels.triton import available as triton_available

REF = lookup("kiln::QMatMul").fn
TINY = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 4, "num_stages": 2}
DEV = "cuda" if torch.cuda.is_available() else "cpu"   # interpreted on CPU, compiled on the GPU

if triton_available():
    from kiln.kernels.triton import qgemm
else:
    qgemm = None


def _layer(seed: int):
    """Exact operands (power-of-two scales, an integer bias): every code is the reference's, so a
    lookup in a random table compares bit for bit."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (40, 64), generator=g, dtype=torch.int32).to(torch.int8)
    b = torch.randint(-128, 128, (64, 48), generator=g, dtype=torch.int32).to(torch.int8)
    bias = torch.randint(-64, 64, (48,), generator=g).float()
    return [a, b, torch.tensor(2.0 ** -6), None, torch.tensor(2.0 ** -7), None, bias, None]


def _table(dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-128, 128) if dtype == torch.int8 else (0, 256)
    return torch.randint(lo, hi, (256,), generator=g, dtype=torch.int32).to(dtype)


def test_reference_looks_codes_up_by_their_bits():
    args = _layer(1)
    out = dict(out_scale=torch.tensor(0.25), out_zp=torch.tensor(-3, dtype=torch.int8), out_dtype=TensorProto.INT8)
    table = _table(torch.uint8, 2)
    plain = REF(*args, **out)
    got = REF(*args, **out, table=table)
    assert got.dtype == torch.uint8 and torch.equal(got, table[plain.view(torch.uint8).long()])
    assert len(torch.unique(plain)) > 40                     # many codes, many entries read
    with pytest.raises(ValueError, match="256 entries"):
        looked_up(plain, table[:255])
    with pytest.raises(ValueError, match="int8/uint8 codes"):
        looked_up(plain.float(), table)


@pytest.mark.skipif(qgemm is None, reason="Triton is not installed")
@pytest.mark.parametrize("config", [TINY, {**TINY, "TMA": 1}, {**TINY, "PERSISTENT": 1}],
                         ids=["pointers", "tma", "persistent"])
@pytest.mark.parametrize("code, table_type", [(torch.int8, torch.int8), (torch.uint8, torch.uint8),
                                              (torch.int8, torch.uint8)])
def test_the_epilogue_looks_up_the_codes(config, code, table_type):
    args = _layer(3)
    onnx_type = TensorProto.INT8 if code == torch.int8 else TensorProto.UINT8
    zp = torch.tensor(-3 if code == torch.int8 else 120, dtype=code)
    out = dict(out_scale=torch.tensor(0.25), out_zp=zp, out_dtype=onnx_type)
    table = _table(table_type, 4)
    want = REF(*args, **out, table=table)
    dev = [None if t is None else t.to(DEV) for t in args]
    got = qgemm.qmatmul(*dev, **{k: v.to(DEV) if isinstance(v, torch.Tensor) else v for k, v in out.items()},
                        table=table.to(DEV), config=config).cpu()
    assert got.dtype == table_type and torch.equal(got, want)
