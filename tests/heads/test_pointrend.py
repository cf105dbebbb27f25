import torch
import torch.nn.functional as F

from seglab.book.profile import count_parameters
from seglab.heads.fpn import SemanticFPN
from seglab.heads.pointrend import PointHead, PointRend, point_sample, uncertainty
from seglab.model import Segmentor, head_losses
from seglab.nn.losses import seg_loss


def pyramid(channels=(16, 24, 32, 40), size=16, batch=2):
    """Features at strides 4, 8, 16, 32 of a (4 * size)-pixel image."""
    return [torch.randn(batch, c, size // 2**i, size // 2**i) for i, c in enumerate(channels)]


def small(**kw):
    args = dict(in_channels=(16, 24, 32, 40), neck_channels=8, channels=6, point_channels=10, num_classes=5,
                train_points=32, subdivision_points=20)
    return PointRend(**{**args, **kw})


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg pointrend_r50 (21 classes): FPN neck + FPNHead (channels 128) + PointHead (256 -> 256, 3 fcs,
    # coarse_pred_each_layer, Conv1d with bias)
    model = PointRend(in_channels=(256, 512, 1024, 2048), neck_channels=256, channels=128, point_channels=256,
                      num_classes=21, num_fcs=3)
    point = 3 * ((256 + 21) * 256 + 256) + (256 + 21) * 21 + 21
    assert count_parameters(model.point_head) == point == 219_342
    assert count_parameters(model) == 4_970_901 + 219_342 == 5_190_243
    assert count_parameters(PointHead(coarse_pred_each_layer=False)) == (277 * 256 + 256 + 2 * (256 * 256 + 256)
                                                                         + 256 * 21 + 21)


def test_uncertainty_is_the_top2_gap():
    logits = torch.tensor([[2.0, 1.9, -1.0], [0.1, 3.0, 0.0]]).T[None, :, :, None]  # (1, 3, 2, 1)
    u = uncertainty(logits)
    assert u.shape == (1, 2, 1)
    assert torch.allclose(u.flatten(), torch.tensor([-0.1, -2.9]))


def test_point_sample_reads_cell_centres_exactly_and_interpolates_between():
    grid = torch.arange(12.0).view(1, 1, 3, 4)
    centres = torch.tensor([[[0.5 / 4, 0.5 / 3], [3.5 / 4, 2.5 / 3], [1.0 / 4, 0.5 / 3]]])
    values = point_sample(grid, centres)
    assert values.shape == (1, 1, 3)
    assert torch.allclose(values[0, 0], torch.tensor([0.0, 11.0, 0.5]), atol=1e-5)
    assert torch.equal(point_sample(grid, centres[:, 2:] + 0.01, mode="nearest")[0, 0], torch.tensor([1.0]))


def test_point_head_concatenates_the_coarse_prediction_at_each_layer():
    head = PointHead(in_channels=8, channels=6, num_classes=3, num_fcs=3)
    assert [fc[0].in_channels for fc in head.fcs] == [11, 9, 9] and head.fc_seg.in_channels == 9
    assert head(torch.randn(2, 8, 7), torch.randn(2, 3, 7)).shape == (2, 3, 7)
    plain = PointHead(in_channels=8, channels=6, num_classes=3, num_fcs=3, coarse_pred_each_layer=False)
    assert [fc[0].in_channels for fc in plain.fcs] == [11, 6, 6] and plain.fc_seg.in_channels == 6


def test_training_forward_is_the_coarse_head_and_eval_refines_to_full_resolution():
    head = small()
    feats = pyramid()
    head.train()
    assert head(feats).shape == (2, 5, 16, 16)  # stride 4
    head.eval()
    with torch.no_grad():
        assert head(feats).shape == (2, 5, 64, 64)  # two 2x steps
        head.subdivision_steps = 0
        assert head(feats).shape == (2, 5, 16, 16)


def test_subdivision_changes_only_the_chosen_points():
    head = small(subdivision_steps=1, subdivision_points=20).eval()
    with torch.no_grad():
        fine, coarse = head.coarse(pyramid())
        trace = []
        refined = head.subdivide(fine, coarse, trace)
        upsampled = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
    points, logits = trace[0]
    assert points.shape == (2, 20, 2) and logits is refined
    changed = (refined != upsampled).any(1).flatten(1)  # (b, h*w)
    assert changed.sum(1).tolist() == [20, 20]
    # the changed cells are the 20 most uncertain of the upsampled map, and their centres are the points
    index = uncertainty(upsampled).flatten(1).topk(20, dim=1).indices
    assert torch.equal(changed, torch.zeros_like(changed).scatter(1, index, True))
    w = upsampled.shape[-1]
    cells = (points[..., 1] * upsampled.shape[-2] - 0.5).round().long() * w + (points[..., 0] * w - 0.5).round().long()
    assert torch.equal(cells, index)
    # and their logits are the point head's on the fine features and the coarse logits there
    expected = head.point_head(point_sample(fine, points), point_sample(coarse, points))
    assert torch.allclose(torch.gather(refined.flatten(2), 2, index[:, None].expand(-1, 5, -1)), expected)


def test_all_cells_are_refined_when_the_budget_exceeds_the_map():
    head = small(subdivision_steps=1, subdivision_points=10_000).eval()
    with torch.no_grad():
        fine, coarse = head.coarse(pyramid())
        trace = []
        head.subdivide(fine, coarse, trace)
    assert trace[0][0].shape == (2, 32 * 32, 2)


def test_training_points_mix_uncertain_and_random():
    head = small(train_points=40, oversample_ratio=3, importance_ratio=0.75)
    coarse = torch.zeros(2, 5, 8, 8)
    coarse[:, 0, :, :4] = 5.0  # left half class 0, right half class 1: uncertain along x = 0.5
    coarse[:, 1, :, 4:] = 5.0
    torch.manual_seed(0)
    points = head.training_points(coarse)
    assert points.shape == (2, 40, 2) and points.min() >= 0 and points.max() <= 1
    important = (points[:, :30, 0] - 0.5).abs()
    assert important.mean() < (points[:, 30:, 0] - 0.5).abs().mean()  # the 75% chosen by uncertainty sit near the edge


def test_losses_add_the_point_loss_and_gradients_reach_every_parameter():
    from seglab.backbones import create
    from seglab.nn.blocks import resize
    torch.manual_seed(0)
    backbone = create("resnet18", output_stride=32)
    model = Segmentor(backbone, PointRend(in_channels=backbone.channels, neck_channels=8, channels=6,
                                          point_channels=10, num_classes=5, train_points=32, subdivision_points=50))
    images = torch.randn(2, 3, 64, 64)
    masks = torch.randint(0, 5, (2, 64, 64))
    masks[:, :, :8] = 255
    model.train()
    losses = model.losses(images, masks)  # the Segmentor asks the head for its losses (seglab.model.head_losses)
    assert set(losses) == {"coarse", "points"}
    features = backbone(images)
    assert torch.isclose(losses["coarse"], seg_loss(resize(model.head(features), (64, 64)), masks))
    assert set(head_losses(model.head, features, masks)) == {"coarse", "points"}
    model.loss(images, masks).backward()
    missing = [n for n, p in model.head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (2, 5, 64, 64)


def test_point_loss_ignores_void_and_is_zero_when_everything_is_void():
    head = small()
    fine, coarse = head.coarse(pyramid())
    void = torch.full((2, 64, 64), 255)
    assert head.point_loss(fine, coarse, void).item() == 0.0
    masks = torch.randint(0, 5, (2, 64, 64))
    assert torch.isfinite(head.point_loss(fine, coarse, masks))


def test_coarse_head_is_semantic_fpn():
    head = small()
    sem = SemanticFPN(in_channels=(16, 24, 32, 40), neck_channels=8, channels=6, num_classes=5, dropout=0.0)
    assert count_parameters(head) - count_parameters(head.point_head) == count_parameters(sem)
