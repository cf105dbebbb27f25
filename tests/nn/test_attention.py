import pytest
import torch

from seglab.book.profile import count_flops, saved_bytes
from seglab.nn.attention import attend, attention_weights


@pytest.mark.parametrize("d,e", [(16, 16), (8, 32)], ids=["equal widths", "v wider than q, k"])
@pytest.mark.parametrize("heads", [False, True], ids=["(b, n, d)", "(b, heads, n, d)"])
def test_sdpa_and_explicit_attention_agree(d, e, heads):
    torch.manual_seed(0)
    shape = (2, 3) if heads else (2,)
    q, k, v = torch.randn(*shape, 50, d), torch.randn(*shape, 40, d), torch.randn(*shape, 40, e)
    for scale in (None, 0.3):
        fast, slow = attend(q, k, v, scale), attend(q, k, v, scale, explicit=True)
        assert fast.shape == slow.shape == (*shape, 50, e)
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_explicit_attention_is_the_textbook_formula():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 5, 4), torch.randn(1, 6, 4), torch.randn(1, 6, 3)
    weights = torch.softmax(q @ k.transpose(1, 2) / 2, dim=-1)  # 1/sqrt(4)
    torch.testing.assert_close(attention_weights(q, k), weights)
    torch.testing.assert_close(attend(q, k, v, explicit=True), weights @ v)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 5))


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided views"])
@pytest.mark.parametrize("d,e", [(32, 32), (16, 64)])
def test_sdpa_keeps_no_n_by_m_matrix_for_backward(d, e, strided):
    n = 1024
    q, k = (torch.randn(2, n, d, requires_grad=True) for _ in range(2))
    v = torch.randn(2, n, e, requires_grad=True)
    if strided:  # as rearrange(conv_output, "b c h w -> b (h w) c") gives them
        q, k, v = (torch.randn(2, t.shape[-1], n, requires_grad=True).transpose(1, 2) for t in (q, k, v))
    matrix = 2 * n * n * 4  # the (b, n, n) float32 weights
    lean = saved_bytes(attend, q, k, v)
    explicit = saved_bytes(lambda *t: attend(*t, explicit=True), q, k, v)
    assert lean < matrix / 4, "SDPA kept an n x n matrix for backward"
    assert explicit >= matrix, "the explicit form must keep its softmax weights"
    out = attend(q, k, v)
    out.sum().backward()


class Call(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *inputs):
        return self.fn(*inputs)


def test_attention_flops_are_counted():
    q, k, v = torch.randn(1, 64, 8), torch.randn(1, 32, 8), torch.randn(1, 32, 8)
    total, by_op, uncounted = count_flops(Call(attend), (q, k, v))
    assert total == 64 * 32 * (8 + 8) and set(uncounted) <= {"aten::mul"}  # shape arithmetic while tracing


def test_gathers_are_counted_one_per_element_written():
    x, index = torch.randn(4, 10), torch.randint(0, 10, (4, 6))
    total, by_op, _ = count_flops(Call(lambda x, i: torch.gather(x, 1, i)), (x, index))
    assert total == 24 and "gather" in by_op


def test_keys_that_are_the_values_are_copied_once():
    n, d = 1024, 32
    q = torch.randn(2, 1, d, requires_grad=True)
    x = torch.randn(2, d, n, requires_grad=True).transpose(1, 2)  # (b, n, d), a strided view
    one_copy = 2 * n * d * 4
    assert saved_bytes(lambda q, x: attend(q, x, x), q, x) < 1.5 * one_copy
    torch.testing.assert_close(attend(q, x, x), attend(q, x, x, explicit=True))
