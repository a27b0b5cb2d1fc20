"""fusedopt for PyTorch CPU tensors: torch.optim optimizers and torch.nn batch-norm modules whose
work is fusedopt's kernels, on the tensors' own memory.

    import torch, fusedopt.torch
    model = torch.nn.Sequential(torch.nn.Linear(784, 64), fusedopt.torch.BatchNorm1d(64), torch.nn.Linear(64, 10))
    opt = fusedopt.torch.AdamW(model.parameters(), lr=1e-3)   # a torch.optim.AdamW
    loss = model(x).square().mean(); loss.backward(); opt.step()

Importing this package imports torch; `import fusedopt` alone never does. It also moves
fusedopt's parallel regions onto torch's OpenMP threads (use_torch_threads), so that a step right
after backward does not compete with torch's spinning workers for the cores.
"""
from ._omp import use_torch_threads
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormReLU2d, batch_norm
from .optim import SGD, Adagrad, Adam, AdamW, RMSprop

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "RMSprop",
           "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormReLU2d", "batch_norm",
           "use_torch_threads"]

use_torch_threads()
