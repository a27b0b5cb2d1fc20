"""fusedopt for PyTorch CPU tensors: torch.optim optimizers whose step is fusedopt's kernels.

    import torch, fusedopt.torch
    model = torch.nn.Linear(784, 10)
    opt = fusedopt.torch.AdamW(model.parameters(), lr=1e-3)   # a torch.optim.AdamW
    loss = model(x).square().mean(); loss.backward(); opt.step()

Importing this package imports torch; `import fusedopt` alone never does.
"""
from .optim import SGD, Adagrad, Adam, AdamW, RMSprop

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "RMSprop"]
