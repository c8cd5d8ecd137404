"""Imports every op family module so that their registrations run."""
from kiln.kernels.reference import (  # noqa: F401
    activations,
    elementwise,
    fused,
    indexing,
    nn,
    normalization,
    pooling,
    reduce,
    resize,
    tensor,
)
