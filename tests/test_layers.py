"""The oneDNN float32 linear equals F.linear (values and gradients); FLOP formulas count the CPU kernels."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from support.configs import SCRIPT_KWARGS, SPEC_KEYS
from torch.utils.flop_counter import FlopCounterMode

import layers
import modeling_finetune  # noqa: F401  (registers the models)


@pytest.mark.skipif(not layers._ONEDNN, reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize("shape,bias,transpose", [((7, 33), True, False), ((3, 5, 33), False, False),
                                                  ((33, 9), True, True), ((2, 0, 33), True, False)])
def test_onednn_linear_matches_f_linear_values_and_gradients(shape, bias, transpose, monkeypatch):
    monkeypatch.setattr(layers, "ONEDNN_LINEAR", True)  # whatever this processor's default
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    x = x.t() if transpose else x  # a non-contiguous input
    weight = torch.randn(17, 33, generator=gen)
    b = torch.randn(17, generator=gen) if bias else None
    leaves = [t.clone().requires_grad_() for t in (x, weight) + ((b,) if bias else ())]
    reference = [t.detach().clone().requires_grad_() for t in leaves]

    out = layers.linear(*leaves) if bias else layers.linear(*leaves, None)
    expected = F.linear(*reference) if bias else F.linear(*reference, None)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn(out.shape, generator=gen)
    out.backward(grad)
    expected.backward(grad)
    for ours, theirs in zip(leaves, reference):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-5)


def test_linear_falls_back_to_f_linear_outside_float32_cpu():
    x, w = torch.randn(4, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    assert torch.equal(layers.linear(x, w), F.linear(x, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layers.linear(x.float(), w.float()).dtype == torch.bfloat16


@pytest.mark.parametrize("fusion,name", [(None, "maedfer_ft_base"), ("add", "ca_add_ft_base")])
def test_flop_counter_equals_the_original_count(fusion, name):
    expected = json.loads((SPEC_KEYS / "flops.json").read_text())[name]["flops_1clip"]["flops"]
    model = timm.create_model("vit_base_dim512_no_depth_patch16_160", fusion=fusion, **SCRIPT_KWARGS).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 16, 160, 160))
    assert abs(counter.get_total_flops() / expected - 1) < 0.01
