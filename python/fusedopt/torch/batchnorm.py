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
lazily negated views, an input not aligned to its dtype, tensor subclasses with __torch_function__,
torch.func transforms, forward-mode AD's dual tensors, tensors with no memory to read such as
the meta device's and torch.export's fake tensors, mismatched shapes) is handed to
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

Cost: a step's time beyond its two kernels is the Python and torch code around them (module
call, autograd.Function, the engine, AccumulateGrad, the tensors made from the outputs). The
kernels stream their arrays through the core's L2, so that code runs from further out right
after them: an empty autograd.Function round trip measured 67 us, 213 us right after reading 2
MB (thread CPU time, 2-core Sapphire Rapids VM). Hence tensors reach the kernels as NumPy views
made from data_ptr (_core.tensor_view) rather than Tensor.numpy() (four dispatched ops each).

Differences from torch: the backward is once-differentiable (no double backward: torch raises
a clear RuntimeError if it is attempted); it computes the input's gradient even when only
weight and bias need theirs (one pass of the kernel writes all three; None is returned for what
was not asked for); and a 3-d (N, C, L) input whose memory is (N, L, C) gives an output in that
layout too (torch has no memory format for 3-d tensors and returns a contiguous one); the output
and the input's gradient have storage that cannot grow (resize_ to more elements raises, as on
any tensor made by torch.from_numpy); torch.fx.symbolic_trace keeps torch.nn's modules as leaves
(call_module nodes) by their module's name, and traces into these, which it cannot (their
forward reads the input's memory): trace with a Tracer that keeps them as leaves too,

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, name):
            ours = (BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormReLU2d)
            return isinstance(m, ours) or super().is_leaf_module(m, name)
    graph_module = torch.fx.GraphModule(model, Tracer().trace(model))

torch.jit.script cannot compile these modules' forward (torch.jit.trace can, but its traced graph
does not count num_batches_tracked), torch.ao.quantization.fuse_modules looks modules up by exact
type and does not know them (torch.nn.utils.fusion.fuse_conv_bn_eval works), and BatchNormReLU2d's
gradient is 0 where its output is NaN (torch's ReLU passes it there).
"""
from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
import torch.autograd.forward_ad as _forward_ad
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _NormBase
from torch.overrides import has_torch_function_variadic

from .. import _core
from .._tensors import numpy_dtype

# fusedopt.batchnorm's two kernels, positional (_core's signatures: the module passes vetted
# arguments, without the keyword layer's checks)
_batchnorm_forward = _core.batchnorm_forward
_are_functorch_transforms_active = torch._C._are_functorch_transforms_active
_batchnorm_backward = _core.batchnorm_backward

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormReLU2d", "batch_norm"]

# the torch dtypes the kernels take (their NumPy dtypes: _kernel_dtype)
_KERNEL_DTYPES = (torch.float32, torch.float64)
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _kernel_dtype(x: Tensor) -> np.dtype[Any]:
    """The NumPy dtype of an input _kernels_take has vetted (fusedopt's one torch -> NumPy mapping)."""
    dtype = numpy_dtype(x.dtype)
    assert dtype is not None  # float32 or float64: _KERNEL_DTYPES
    return dtype


def _in_channels_last(t: Tensor) -> bool:
    """Whether t's memory is ordered (N, L..., C): torch's own flag where a memory format names
    that order (4-d, 5-d), else t's (N, L..., C) view tested (3-d)."""
    memory_format = _CHANNELS_LAST.get(t.dim())
    if memory_format is not None:
        return bool(t.is_contiguous(memory_format=memory_format))
    return t.dim() == 3 and bool(t.permute(0, 2, 1).is_contiguous())


def _kernel_layout(x: Tensor) -> tuple[Tensor, bool]:
    """x, or a contiguous copy of it, and whether the kernels take it as channels-last: False
    for (N, C, ...) memory with axis 1, True for (N, L..., C) memory with axis -1."""
    if x.is_contiguous():
        return x, False
    if _in_channels_last(x):
        return x, True
    return x.contiguous(), False


def _kernel_shape(x: Tensor, channels_last: bool) -> tuple[int, ...]:
    """The shape of x's memory as the kernels see it: (N, C, ...) or (N, L..., C)."""
    shape = tuple(x.shape)
    return (shape[0], *shape[2:], shape[1]) if channels_last else shape


def _view(t: Tensor, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    """The kernels' NumPy view of a tensor _kernels_take has vetted (dense CPU memory of `dtype`,
    not a negated view, C-contiguous in the kernels' `shape`): _core.tensor_view, one call into
    torch (data_ptr) where Tensor.numpy() makes four dispatched ops."""
    return _core.tensor_view(t, dtype, shape)


def _optional_view(t: Tensor | None, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray | None:
    return None if t is None else _view(t, dtype, shape)


def _tensor(a: np.ndarray, channels_last: bool) -> Tensor:
    """A kernel output (x's kernel-order shape) as the (N, C, ...) tensor torch users expect, on
    the same memory, whose lifetime keeps the array (and so its pooled buffer) alive: contiguous,
    or with x's channels-last strides. The NumPy array is transposed, not the tensor: a torch view
    returned by an autograd.Function refuses in-place ops (nn.ReLU(inplace=True) after the module)."""
    if channels_last:
        a = a.transpose((0, a.ndim - 1, *range(1, a.ndim - 1)))
    return torch.from_numpy(a)


def _raw_memory(t: Tensor, dtype: torch.dtype, shape: tuple[int, ...] | None = None) -> bool:
    """Whether t's memory holds its values as they are: a dense CPU tensor of `dtype` (and
    `shape`), aligned to it, not a lazily negated view (what every view of memory here asks first).
    A tensor with no memory to read (torch.export's and torch.compile's fake and functional
    tensors, whose data_ptr raises) has none."""
    if not (t.is_cpu and t.dtype == dtype and t.layout == torch.strided and not t.is_neg()
            and (shape is None or t.shape == shape)):
        return False
    try:
        return bool(t.data_ptr() % t.element_size() == 0)
    except RuntimeError:
        return False


def _like_x(t: Tensor, x: Tensor, channels_last: bool) -> bool:
    """Whether t can be viewed as the kernels view x: a plain tensor (no subclass, whose memory
    may not be its data) with x's raw memory of x's dtype and shape, in x's memory layout."""
    return (type(t) is Tensor and _raw_memory(t, x.dtype, x.shape)
            and (_in_channels_last(t) if channels_last else t.is_contiguous()))


def _view_like_x(t: Tensor, x: Tensor, channels_last: bool, shape: tuple[int, ...]) -> np.ndarray:
    """t (dy, or the saved ReLU output) in the kernels' layout of x: a view where it is in that
    layout (autograd may hand dy in another layout, expanded, misaligned, negated or of another
    dtype; a saved-tensor hook or x.data assigned may leave x and the output in different
    layouts), else a contiguous aligned copy (or the kernel's dtype error)."""
    if _like_x(t, x, channels_last):
        return _view(t, _kernel_dtype(x), shape)
    a = t.detach().resolve_neg().numpy()
    return np.require(a.transpose((0, *range(2, a.ndim), 1)) if channels_last else a, requirements=("C", "A"))


def _backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
    """_BatchNormFunction.backward's work (once-differentiable: no graph of its own)."""
    x, weight, y = ctx.saved_tensors
    # x and weight are the forward's inputs, unchanged (version-checked), unless .data was
    # assigned: so they are vetted again before any view of their memory is made. (y, an output,
    # is saved as autograd's own snapshot of it, which .data assigned to y does not reach.)
    if not _kernels_take(x, (weight,)):
        raise RuntimeError("fusedopt batch norm: the input or weight saved for backward was replaced (.data "
                           "assigned) by a tensor the kernels do not take")
    x_used, channels_last = _kernel_layout(x)  # the same decision as forward's
    need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
    if weight is None and need_bias:  # the kernel sums dbias only beside dweight; w = 1 changes nothing
        weight = torch.ones(x.shape[1], dtype=x.dtype)
    dtype, shape = _kernel_dtype(x), _kernel_shape(x_used, channels_last)
    dx, dweight, dbias = _batchnorm_backward(
        _view_like_x(dy, x, channels_last, shape), _view(x_used, dtype, shape),
        _optional_view(weight, dtype, (x.shape[1],)), ctx.save_mean, ctx.save_invstd, -1 if channels_last else 1,
        ctx.training, None if y is None else _view_like_x(y, x, channels_last, shape), None)
    return (_tensor(dx, channels_last) if need_x else None,
            torch.from_numpy(dweight) if need_weight else None,
            torch.from_numpy(dbias) if need_bias and ctx.bias_given else None,
            None, None, None, None, None, None)


# with create_graph=True: torch's wrapper, whose outputs raise if differentiated again
_backward_once_differentiable = once_differentiable(_backward)


class _BatchNormFunction(torch.autograd.Function):
    """fusedopt.batchnorm_forward / batchnorm_backward as an autograd node.

    forward saves x, weight and (relu) the output, version-checked by autograd, and keeps the
    kernel's save_mean/save_invstd (NumPy arrays: batch statistics in training, the running
    ones in eval) on ctx for the backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, training: bool, momentum: float, eps: float,
                relu: bool) -> Tensor:
        x_used, channels_last = _kernel_layout(x)
        dtype, channels = _kernel_dtype(x), (x.shape[1],)
        y_array, save_mean, save_invstd = _batchnorm_forward(
            _view(x_used, dtype, _kernel_shape(x_used, channels_last)), _optional_view(weight, dtype, channels),
            _optional_view(bias, dtype, channels), _optional_view(running_mean, dtype, channels),
            _optional_view(running_var, dtype, channels), training, momentum, eps, -1 if channels_last else 1,
            relu, None)
        y = _tensor(y_array, channels_last)
        ctx.save_for_backward(x, weight, y if relu else None)
        ctx.save_mean, ctx.save_invstd, ctx.training = save_mean, save_invstd, training
        ctx.bias_given = bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        # grad mode is off in a backward unless create_graph=True: then once_differentiable's
        # wrapper, whose no_grad block and checks a plain backward does without
        if torch.is_grad_enabled():
            return cast(tuple[Tensor | None, ...], _backward_once_differentiable(ctx, dy))
        return _backward(ctx, dy)


def _has_tangent(tensors: tuple[Tensor | None, ...]) -> bool:
    """Whether forward-mode AD is on and gives one of tensors a tangent (the kernels' Function has no jvp)."""
    return _forward_ad._current_level >= 0 and any(
        t is not None and _forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def _kernels_take(x: Tensor, per_channel: tuple[Tensor | None, ...]) -> bool:
    """Whether fusedopt's kernels compute this call (else torch's batch_norm does): not under
    torch.func's transforms (grad, vmap, jacrev, ...) nor for forward-mode AD's dual tensors,
    whose rules torch's batch_norm has and the kernels' autograd.Function lacks."""
    if bool(_are_functorch_transforms_active()):  # (their wrapped tensors have no memory to view)
        return False
    if x.dtype not in _KERNEL_DTYPES or not _raw_memory(x, x.dtype):
        return False
    if x.dim() < 2 or x.numel() == 0 or has_torch_function_variadic(x, *per_channel) or _has_tangent((x, *per_channel)):
        return False
    channels = (x.shape[1],)
    return all(t is None or (_raw_memory(t, x.dtype, channels) and t.is_contiguous()) for t in per_channel)


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


_INT64 = np.dtype(np.int64)


def _count_batch(counter: Tensor, cumulative: bool) -> float:
    """num_batches_tracked += 1; returns 1 / its new value where the running statistics are the
    cumulative average (momentum=None), else 0. torch's buffer (a plain 0-d int64 CPU tensor) is
    counted through a NumPy view of its memory (_core.tensor_view): right after a step's kernels
    have evicted the caches, torch's add_ on it costs 60-80 us (the dispatcher's code and data),
    a NumPy fill 9-12 (best-median of 300, 2-core Sapphire Rapids VM). Any other counter (a
    tensor subclass, another device or dtype, a fake tensor of torch.export) by torch's add_,
    read only where it is used, as torch's module does (a meta or fake tensor has no value)."""
    if type(counter) is Tensor and _raw_memory(counter, torch.int64, ()):
        view = _core.tensor_view(counter, _INT64, ())
        batches = int(view) + 1
        view.fill(batches)
        return 1.0 / batches if cumulative else 0.0
    counter.add_(1)
    return 1.0 / float(counter) if cumulative else 0.0


def _module_forward(module: _NormBase, input: Tensor, relu: bool) -> Tensor:
    """torch.nn.modules.batchnorm._BatchNorm.forward, calling batch_norm above."""
    module._check_input_dim(input)
    # momentum=None: the cumulative average, 1 / (batches seen, this one included)
    factor = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats and module.num_batches_tracked is not None:
        average = _count_batch(module.num_batches_tracked, module.momentum is None)
        factor = average if module.momentum is None else module.momentum
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
