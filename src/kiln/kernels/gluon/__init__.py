"""kiln's GPU kernels written in Gluon, Triton's lower-level dialect, where a kernel lays out its own
shared memory, barriers, warp partitions and MMA waits: what Triton's compiler does not do on
Hopper (warp specialization; int8 MMAs left in flight). Gluon has no interpreter, so these kernels
run on the GPU only: their conformance tests are GPU tests against the reference ops. Their
tactics are registered unless KILN_GLUON=0; the tuner times them against the Triton kernels and
keeps one where it is faster and agrees with the reference."""
from __future__ import annotations

import os


def available() -> bool:
    """Whether this Triton has Gluon with the Hopper TMA, barrier and warp-group MMA APIs."""
    try:
        from triton.experimental.gluon.language.nvidia import hopper
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    except ImportError:
        return False
    return TensorDescriptor is not None and all(hasattr(hopper, n) for n in ("mbarrier", "tma", "warpgroup_mma"))


def enabled() -> bool:
    """The Gluon tactics are registered: Gluon is available and KILN_GLUON is not 0."""
    return os.environ.get("KILN_GLUON", "1") != "0" and available()
