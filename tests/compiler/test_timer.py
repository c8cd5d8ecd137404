"""The tuner's CUDA timer: the GPU hold sized by a candidate's host time (compiler/timer.py)."""
from __future__ import annotations

from kiln.compiler.timer import GPU_CYCLES_PER_SECOND, HOLD_CYCLES, HOLD_MARGIN, MAX_HOLD_CYCLES, hold_cycles_for


def test_a_fast_host_path_gets_the_least_hold():
    assert hold_cycles_for(0.0) == HOLD_CYCLES
    assert hold_cycles_for(20e-6) == HOLD_CYCLES            # a plain launch: ~20 us
    assert hold_cycles_for(0.0, least=1000) == 1000


def test_a_slow_host_path_is_outlasted_by_its_margin():
    # A TMA-descriptor launch of ~0.4 ms: held 1.2 ms at 2 GHz, longer than the host path at any clock below it.
    cycles = hold_cycles_for(0.4e-3)
    assert cycles == int(HOLD_MARGIN * 0.4e-3 * GPU_CYCLES_PER_SECOND) > HOLD_CYCLES
    assert cycles / GPU_CYCLES_PER_SECOND > 0.4e-3


def test_the_hold_is_capped_unless_asked_for_more():
    assert hold_cycles_for(10.0) == MAX_HOLD_CYCLES
    assert hold_cycles_for(10.0, least=2 * MAX_HOLD_CYCLES) == 2 * MAX_HOLD_CYCLES
