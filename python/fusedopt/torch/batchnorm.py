"""Batch normalization modules for torch, running fusedopt's kernels: drop-ins for torch.nn's.

    import torch
    from fusedopt.torch.batchnorm import BatchNorm2d, BatchNormReLU2d
    bn = BatchNorm2d(64)                                   # torch.nn.BatchNorm2d's arguments
    y = bn(torch.randn(32, 64, 56, 56).to(memory_format=torch.channels_last))
    y.sum().backward()                                     # fusedopt's backward kernel

BatchNorm1d, BatchNorm2d and BatchNorm3d subclass torch.nn.BatchNorm1d/2d/3d and replace only
forward: constructor arguments, parameters, buffers (running_mean, running_var,
num_batches_tracked, momentum=None as a cumulative average), state_dict and train/eval are
torch's own, so checkpoints go both ways. BatchNormReLU2d is BatchNorm2d followed by ReLU in one
pass (the kernels' fused ReLU), with a BatchNorm2d's parameters and state_dict keys.

Which calls run fusedopt's kernels: CPU float32/float64 input with at least one element, and
weight, bias and running statistics (those given) contiguous, of shape (C,) and of the input's
dtype. The input is used in its own memory layout without a copy: contiguous (N, C, ...) with
the channel axis 1, or channels-last (torch.channels_last, channels_last_3d, or any (N, C, L...)
whose memory is ordered (N, L..., C)) as a C-contiguous (N, L..., C) view with axis -1; the
output and the input's gradient are in that same layout. An input in any other layout is copied
to a contiguous one first. Every other call (CUDA, half precision, mixed dtypes, empty input,
tensor subclasses with __torch_function__, mismatched shapes) is handed to
torch.nn.functional.batch_norm, which computes it or raises its own error, so these modules
behave as torch's wherever the kernels do not apply.

Memory: the output and the input's gradient are the kernels' own outputs (batchnorm_forward and
batchnorm_backward without out=) as tensors on the same memory (torch.from_numpy). Those of 64
KiB or more come from fusedopt's output pool, which takes a buffer back when the last tensor,
array or view using it dies and hands it to the next output of the same size: a training loop's
steps run on memory already faulted in, instead of first-touch page faults on fresh memory every
step. The pool holds at most the largest total of such outputs that were alive at once (one per
batch-norm layer between its forward and backward, plus the gradients in flight); idle, those
bytes stay kept for the next step until fusedopt.batchnorm.release_output_buffers() frees them.

Differences from torch: the backward is once-differentiable (no double backward: torch raises
a clear RuntimeError if it is attempted); it computes the input's gradient even when only
weight and bias need theirs (one pass of the kernel writes all three; None is returned for what
was not asked for); and a 3-d (N, C, L) input whose memory is (N, L, C) gives an output in that
layout too (torch has no memory format for 3-d tensors and returns a contiguous one); the output
and the input's gradient have storage that cannot grow (resize_ to more elements raises, as on
any tensor made by torch.from_numpy).
"""
from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _NormBase
from torch.overrides import has_torch_function_variadic

from ..batchnorm import batchnorm_backward, batchnorm_forward

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormReLU2d", "batch_norm"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


def _kernel_layout(x: Tensor) -> tuple[Tensor, tuple[int, ...] | None]:
    """x, or a contiguous copy of it, and the permutation that makes it the kernels' C-contiguous
    view: None for (N, C, ...) with axis 1, (0, 2, ..., 1) for channels-last with axis -1."""
    if x.is_contiguous():
        return x, None
    perm = (0, *range(2, x.dim()), 1)
    if x.dim() > 2 and x.permute(perm).is_contiguous():
        return x, perm
    return x.contiguous(), None


def _tensor(a: np.ndarray, perm: tuple[int, ...] | None) -> Tensor:
    """A kernel output (x's kernel-order shape) as the (N, C, ...) tensor torch users expect, on
    the same memory, whose lifetime keeps the array (and so its pooled buffer) alive: contiguous,
    or with x's channels-last strides. The NumPy array is transposed, not the tensor: a torch view
    returned by an autograd.Function refuses in-place ops (nn.ReLU(inplace=True) after the module)."""
    if perm is not None:
        a = a.transpose((0, a.ndim - 1, *range(1, a.ndim - 1)))
    return torch.from_numpy(a)


def _array(t: Tensor, perm: tuple[int, ...] | None = None) -> np.ndarray:
    """The NumPy view of a tensor _kernels_take has vetted (CPU, strided, float32/float64), in the
    kernels' order. This is what fusedopt._tensors.to_ndarray makes of such a tensor, without its
    checks (done once per call in _kernels_take), and detach() only for a tensor that requires grad
    (.numpy() refuses it): ~0.8 us a tensor, 1.3 with the detach, and a step converts ten."""
    a: np.ndarray = (t.detach() if t.requires_grad else t).numpy()
    return a if perm is None else a.transpose(perm)


def _optional_array(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else _array(t)


class _BatchNormFunction(torch.autograd.Function):
    """fusedopt.batchnorm_forward / batchnorm_backward as an autograd node.

    forward saves x, weight and (relu) the output, version-checked by autograd, and keeps the
    kernel's save_mean/save_invstd (NumPy arrays: batch statistics in training, the running
    ones in eval) on ctx for the backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, training: bool, momentum: float, eps: float,
                relu: bool) -> Tensor:
        x_used, perm = _kernel_layout(x)
        y_array, save_mean, save_invstd = batchnorm_forward(
            _array(x_used, perm), _optional_array(weight), _optional_array(bias), _optional_array(running_mean),
            _optional_array(running_var), training=training, momentum=momentum, eps=eps,
            axis=1 if perm is None else -1, relu=relu)
        y = _tensor(y_array, perm)
        ctx.save_for_backward(x, weight, y if relu else None)
        ctx.save_mean, ctx.save_invstd, ctx.training = save_mean, save_invstd, training
        ctx.bias_given = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, y = ctx.saved_tensors
        x_used, perm = _kernel_layout(x)  # the same decision as forward's: x is unchanged (version-checked)
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        if weight is None and need_bias:  # the kernel sums dbias only beside dweight; w = 1 changes nothing
            weight = torch.ones(x.shape[1], dtype=x.dtype)
        # autograd may hand a gradient in another layout than y's, or expanded: then a copy
        dy_array = np.ascontiguousarray(_array(dy, perm))
        dx, dweight, dbias = batchnorm_backward(
            dy_array, _array(x_used, perm), _optional_array(weight), ctx.save_mean, ctx.save_invstd,
            axis=1 if perm is None else -1, training=ctx.training,
            relu_output=None if y is None else _array(y, perm))
        return (_tensor(dx, perm) if need_x else None,
                torch.from_numpy(dweight) if need_weight else None,
                torch.from_numpy(dbias) if need_bias and ctx.bias_given else None,
                None, None, None, None, None, None)


def _kernels_take(x: Tensor, per_channel: tuple[Tensor | None, ...]) -> bool:
    """Whether fusedopt's kernels compute this call (else torch's batch_norm does)."""
    if not x.is_cpu or x.dtype not in _KERNEL_DTYPES or x.layout != torch.strided:
        return False
    if x.dim() < 2 or x.numel() == 0 or has_torch_function_variadic(x, *per_channel):
        return False
    channels = x.shape[1]
    for t in per_channel:
        if t is not None and (not t.is_cpu or t.dtype != x.dtype or t.layout != torch.strided or t.dim() != 1
                              or t.shape[0] != channels or not t.is_contiguous()):
            return False
    return True


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, relu: bool = False) -> Tensor:
    """torch.nn.functional.batch_norm on fusedopt's kernels (see the module docstring for which
    calls they take; the others run torch's). relu=True applies ReLU to the output in the same
    pass (and its gradient in the backward's)."""
    # the kernels want both running statistics or neither, and them in eval: else torch's error
    stats_taken = (running_mean is None) == (running_var is None) and (training or running_mean is not None)
    if not stats_taken or not _kernels_take(input, (running_mean, running_var, weight, bias)):
        y = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        return torch.relu(y) if relu else y
    # torch's own checks and messages (F.batch_norm's), before the kernel's
    if training and input.numel() // input.shape[1] == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    return cast(Tensor, _BatchNormFunction.apply(
        input, weight, bias, running_mean, running_var, training, momentum, eps, relu))


def _count_batch(counter: Tensor) -> int:
    """num_batches_tracked += 1, and its new value. A plain 0-d CPU tensor (torch's buffer) is
    counted through its NumPy view: right after a step's kernels have evicted the caches, torch's
    add_ on it costs 60-80 us (the dispatcher's code and data), a NumPy fill 9-12 (best-median of
    300, 2-core Sapphire Rapids VM). Any other counter (a tensor subclass, another device) by
    torch's add_."""
    if type(counter) is Tensor and counter.is_cpu and counter.dim() == 0 and not counter.requires_grad:
        view = counter.numpy()
        batches = int(view) + 1
        view.fill(batches)
        return batches
    counter.add_(1)
    return int(counter)


def _module_forward(module: _NormBase, input: Tensor, relu: bool) -> Tensor:
    """torch.nn.modules.batchnorm._BatchNorm.forward, calling batch_norm above."""
    module._check_input_dim(input)
    # momentum=None: the cumulative average, 1 / (batches seen, this one included)
    factor = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats and module.num_batches_tracked is not None:
        batches = _count_batch(module.num_batches_tracked)
        factor = 1.0 / batches if module.momentum is None else module.momentum
    # batch statistics in training, and in eval when there are no running statistics
    use_batch_stats = module.training or (module.running_mean is None and module.running_var is None)
    # running statistics are passed only where they are used: updated in training, read in eval
    pass_running = not module.training or module.track_running_stats
    return batch_norm(input, module.running_mean if pass_running else None,
                      module.running_var if pass_running else None, module.weight, module.bias,
                      use_batch_stats, factor, module.eps, relu=relu)


class BatchNorm1d(torch.nn.BatchNorm1d):
    """torch.nn.BatchNorm1d on fusedopt's kernels: (N, C) or (N, C, L) input."""

    def forward(self, input: Tensor) -> Tensor:
        return _module_forward(self, input, relu=False)


class BatchNorm2d(torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on fusedopt's kernels: (N, C, H, W) input, contiguous or channels_last."""

    def forward(self, input: Tensor) -> Tensor:
        return _module_forward(self, input, relu=False)


class BatchNorm3d(torch.nn.BatchNorm3d):
    """torch.nn.BatchNorm3d on fusedopt's kernels: (N, C, D, H, W) input, contiguous or channels_last_3d."""

    def forward(self, input: Tensor) -> Tensor:
        return _module_forward(self, input, relu=False)


class BatchNormReLU2d(_NormBase):
    """torch.nn.Sequential(torch.nn.BatchNorm2d(...), torch.nn.ReLU()) in one module and one pass.

    The same constructor arguments, parameters, buffers and state_dict keys as BatchNorm2d (a
    BatchNorm2d's state_dict loads into it and back). Deliberately not a subclass of torch's
    BatchNorm2d or _BatchNorm: code that rewrites those (conv-bn folding,
    torch.nn.SyncBatchNorm.convert_sync_batchnorm) would drop the ReLU."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        return _module_forward(self, input, relu=True)
