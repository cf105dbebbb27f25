import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.book.profile import (STANDARD_SHAPES, activation_bytes, count_flops, count_parameters, latency_ms,
                                 profile_head, standard_features)


def test_conv_flops_equal_the_analytic_multiply_adds():
    conv = nn.Conv2d(16, 32, 3, padding=1, bias=False)
    total, by_op, uncounted = count_flops(conv, (torch.zeros(2, 16, 20, 24),))
    assert total == 2 * 32 * 20 * 24 * 16 * 3 * 3
    assert by_op == {"conv": total} and uncounted == {}


class Attention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_scaled_dot_product_attention_is_counted():
    q, k, v = torch.zeros(2, 4, 10, 8), torch.zeros(2, 4, 30, 8), torch.zeros(2, 4, 30, 16)
    total, by_op, uncounted = count_flops(Attention(), (q, k, v))
    assert total == 2 * 4 * 10 * 30 * (8 + 16)  # q k^T, then the product with v
    assert uncounted == {}


def test_softmax_counted_and_elementwise_ops_listed_not_hidden():
    class M(nn.Module):
        def forward(self, x):
            return torch.softmax(x, dim=-1) * 2

    total, by_op, uncounted = count_flops(M(), (torch.zeros(3, 5),))
    assert total == 15
    assert "aten::mul" in uncounted


def test_gelu_is_counted_one_flop_per_element():
    total, by_op, uncounted = count_flops(nn.GELU(), (torch.zeros(3, 5, 7),))
    assert total == 3 * 5 * 7 and by_op == {"gelu": total} and uncounted == {}


def test_dropout_costs_nothing_and_is_not_listed():
    total, _, uncounted = count_flops(nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(4, 2, 1)).eval(),
                                      (torch.zeros(1, 4, 5, 5),))
    assert total == 4 * 2 * 25 and uncounted == {}


def test_activation_bytes_counts_saved_tensors_once_and_skips_inputs_and_weights():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    x = torch.zeros(1, 8, 16, 16)
    assert activation_bytes(conv, (x,)) == 0  # a conv saves its input and its weight only
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    assert activation_bytes(model, (x,)) == 8 * 16 * 16 * 4  # the middle tensor, once


def test_parameters_and_latency():
    lin = nn.Linear(10, 3)
    assert count_parameters(lin) == 33
    assert latency_ms(lin, (torch.zeros(4, 10),), repeats=3) > 0


def test_standard_setting_is_resnet50_d8_at_512():
    assert STANDARD_SHAPES == ((1, 256, 128, 128), (1, 512, 64, 64), (1, 1024, 64, 64), (1, 2048, 64, 64))
    assert [tuple(f.shape) for f in standard_features()] == list(STANDARD_SHAPES)


def test_profile_head_reports_everything():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls = nn.Conv2d(2048, 21, 1)

        def forward(self, features):
            return self.cls(features[-1])

    p = profile_head(Tiny(), repeats=2)
    assert p.params == 2048 * 21 + 21 and p.flops == 2048 * 21 * 64 * 64
    assert p.device == "cpu" and p.latency_ms > 0 and p.cuda_peak_bytes is None
    assert "FLOPs (MACs)" in str(p)


def test_activation_bytes_handles_pooled_batchnorm_at_batch_one_and_restores_modes():
    branch = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    x = torch.zeros(1, 8, 6, 6)
    with pytest.raises(ValueError):  # what a plain training forward does at batch 1
        branch.train()(x)
    assert activation_bytes(branch, (x,)) > 0
    assert branch.training and branch[2].training  # modes are restored
    before = branch[2].running_mean.clone()
    activation_bytes(branch, (x,))
    assert torch.equal(before, branch[2].running_mean)  # and running statistics untouched


def test_profile_measures_activations_on_a_training_batch_of_two():
    from seglab.book.profile import TRAIN_BATCH, profile
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    p = profile(model, (torch.randn(1, 3, 16, 16),), repeats=1)
    assert p.activation_batch == TRAIN_BATCH == 2
    assert p.activation_bytes == TRAIN_BATCH * 8 * 16 * 16 * 4  # the ReLU's output, once per image of the batch
    assert p.flops == (3 * 9 * 8 + 8 * 4) * 16 * 16  # FLOPs stay per image
