"""The CPU dropout (``torch.rand`` mask) and the attention that writes SDPA out when it drops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mertlab.toolkit.attention import attention, attention_with_dropout
from mertlab.toolkit.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keeps_a_bernoulli_fraction_scaled_and_routes_the_gradient(p, dtype):
    torch.manual_seed(0)
    x = torch.ones(400_000, dtype=dtype, requires_grad=True)
    y = dropout(x, p)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005  # 0.5% is > 6 standard deviations
    torch.testing.assert_close(y[kept].float(), torch.full((int(kept.sum()),), 1 / (1 - p)), rtol=1e-2, atol=0)
    y.float().sum().backward()
    torch.testing.assert_close(x.grad.float(), y.detach().float())  # d y / d x = mask / (1 - p)


def test_identity_in_eval_at_zero_and_seeded():
    x = torch.randn(1000)
    module = Dropout(0.3).eval()
    assert module(x) is x and dropout(x, 0.0) is x and dropout(x, 0.3, training=False) is x
    torch.manual_seed(1)
    first = dropout(x, 0.3)
    torch.manual_seed(1)
    assert torch.equal(dropout(x, 0.3), first)  # the global generator: seeded runs and resumes repeat
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_attention_with_dropout_is_sdpa_when_nothing_is_dropped():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 30, 16) for _ in range(3))
    keep = (torch.arange(30) < torch.tensor([30, 17])[:, None])[:, None, None, :]
    got = attention_with_dropout(q, k, v, keep, 1e-12)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=keep))
    torch.testing.assert_close(attention_with_dropout(q, k, v, None, 1e-12), F.scaled_dot_product_attention(q, k, v))


def test_attention_dispatches_to_sdpa_without_dropout_and_writes_it_out_with_dropout(monkeypatch):
    import mertlab.toolkit.attention as attention_module

    q = k = v = torch.randn(1, 2, 8, 4)
    calls = []
    monkeypatch.setattr(attention_module, "attention_with_dropout", lambda *a: calls.append("spelled") or q)
    attention(q, k, v, None, 0.0)
    assert calls == []
    attention(q, k, v, None, 0.1)
    assert calls == ["spelled"]
