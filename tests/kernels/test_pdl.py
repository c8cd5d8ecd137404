"""Programmatic dependent launch switches (kernels/triton/pdl.py): off on the CPU and where
KILN_PDL=0; the kernels themselves are checked launched with it by every GPU kernel test."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.triton import available

if not available():
    pytest.skip("Triton is not installed", allow_module_level=True)

from kiln.kernels.triton import pdl  # noqa: E402


def test_cpu_launches_take_no_pdl():
    assert pdl.options(torch.device("cpu")) == {"PDL": False}


def test_kiln_pdl_0_turns_it_off(monkeypatch):
    monkeypatch.setenv("KILN_PDL", "0")
    pdl.refresh()
    try:
        assert not pdl._supported(0)
    finally:
        monkeypatch.delenv("KILN_PDL")
        pdl.refresh()


@pytest.mark.gpu
def test_gpu_options_follow_the_capability():
    want = torch.cuda.get_device_capability() >= (9, 0)
    assert pdl.options(torch.device("cuda")).get("launch_pdl", False) == want
