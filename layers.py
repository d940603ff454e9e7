"""The compute kernels of the models: linear layers, MLP and multi-head attention.

PyTorch sends float32 CPU matmuls to MKL, which on AMD processors runs its AVX2 path; oneDNN's float32
kernels use AVX-512 there and are ~2x faster, with the same float32 arithmetic (differences are rounding
order, ~1e-6 relative). On Intel processors MKL takes its AVX-512 path: as fast in the forward, faster in
training at batch 8 (benchmarks/bench_model.py's `onednn` / `mkl` variants). So `linear` runs float32 CPU
matmuls through oneDNN where the processor is not Intel's (`ONEDNN_LINEAR`); everywhere else (Intel, CUDA,
autocast, other dtypes, torch.compile) it is F.linear. Attention goes through fused SDPA. FLOP formulas for
the two CPU kernels that `torch.utils.flop_counter` does not know are registered here, so FlopCounterMode
counts them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpu_vendor() -> str:
    """The processor's vendor id (GenuineIntel, AuthenticAMD, ...), or "" where /proc/cpuinfo does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""


# Whether float32 CPU matmuls go through oneDNN (read at every call: benchmarks and tests may set it).
ONEDNN_LINEAR = _ONEDNN and cpu_vendor() != "GenuineIntel"


def _onednn_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias by oneDNN; weight may be a strided view (e.g. a transpose), no copy is made."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_matmul(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_matmul(grad_out, weight.t()).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = _onednn_matmul(grad_out.t(), x.reshape(-1, x.shape[-1]).t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_weight, grad_bias


if _ONEDNN:
    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _linear_pointwise_flop(x_shape, w_shape, *args, **kwargs) -> int:
        return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _sdpa_cpu_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # Anything unusual (empty input, mismatched sizes) goes to F.linear, which handles it or explains the error.
    return (ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.numel() > 0 and x.shape[-1] == weight.shape[-1]
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, computed by oneDNN for float32 CPU tensors where `ONEDNN_LINEAR`."""
    if _use_onednn(x, weight):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters and init) whose forward is `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 -> dropout (no dropout between GELU and fc2, as in the original)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout: nn.Dropout,
              fused: bool = True) -> torch.Tensor:
    """Multi-head attention on (B, heads, tokens, head_dim): fused SDPA, or the explicit math (q scaled first)."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout.p if dropout.training else 0.0, scale=scale)
    attn = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return dropout(attn) @ v
