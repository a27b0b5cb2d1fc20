"""fusedopt for PyTorch CPU tensors (needs torch; `import fusedopt` never imports it).

Minimal placeholder on the batch-norm branch: the shared package __init__ is written on the
optimizer branch and merged by the lead.
"""
from .batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormReLU2d,
    batch_norm,
)

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormReLU2d", "batch_norm"]
