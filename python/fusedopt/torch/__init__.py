"""fusedopt for PyTorch CPU tensors: torch.optim optimizers and torch.nn batch-norm modules whose
work is fusedopt's kernels, on the tensors' own memory.

    import torch, fusedopt.torch
    model = torch.nn.Sequential(torch.nn.Linear(784, 64), fusedopt.torch.BatchNorm1d(64), torch.nn.Linear(64, 10))
    opt = fusedopt.torch.AdamW(model.parameters(), lr=1e-3)   # a torch.optim.AdamW
    loss = model(x).square().mean(); loss.backward(); opt.step()

Importing this package imports torch; `import fusedopt` alone never does.
"""
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormReLU2d, batch_norm
from .optim import SGD, Adagrad, Adam, AdamW, RMSprop

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "RMSprop",
           "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormReLU2d", "batch_norm"]
