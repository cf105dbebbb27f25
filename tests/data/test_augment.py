import torch
import torch.nn.functional as F

from seglab.data.augment import MEAN, STD, augment, crop_grid, eval_batches, normalize, train_batches
from seglab.data.voc import load_split


def canvas_batch():
    images = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    masks = torch.full((2, 16, 16), 255, dtype=torch.uint8)
    masks[:, :10, :12] = torch.randint(0, 21, (2, 10, 12), dtype=torch.uint8)
    images[:, :, 10:], images[:, :, :, 12:] = 0, 0
    return images, masks, torch.tensor([[10, 12], [10, 12]])


def test_grid_at_scale_one_copies_and_flip_mirrors_inside_the_image():
    images, masks, sizes = canvas_batch()
    grid = crop_grid(sizes, 16, 8, torch.ones(2), torch.tensor([False, True]), torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    out = F.grid_sample(masks[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].byte()
    assert torch.equal(out[0], masks[0, 1:9, 2:10])
    assert torch.equal(out[1], masks[1, :8, :12].flip(-1)[:, :8])


def test_augment_shapes_and_void_padding():
    images, masks, sizes = canvas_batch()
    g = torch.Generator().manual_seed(0)
    x, m = augment(images, masks, sizes, crop=24, generator=g, scale_range=(1.0, 1.0), jitter=False)
    assert x.shape == (2, 3, 24, 24) and x.dtype == torch.float32 and m.shape == (2, 24, 24) and m.dtype == torch.int64
    assert (m[:, 10:, :] == 255).all() and (m[:, :, 12:] == 255).all()  # outside the image: void
    assert set(m.unique().tolist()) <= set(range(21)) | {255}


def test_normalize_uses_imagenet_statistics():
    x = MEAN.view(1, 3, 1, 1).expand(1, 3, 2, 2) + STD.view(1, 3, 1, 1)
    assert torch.allclose(normalize(x), torch.ones(1, 3, 2, 2))


def test_batches_are_reproducible_and_cover_epochs(devkit):
    split = load_split("train", 32, progress=False)
    a = [m for _, m in train_batches(split, batch=4, iters=3, crop=24, device="cpu", seed=5)]
    b = [m for _, m in train_batches(split, batch=4, iters=3, crop=24, device="cpu", seed=5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    batches = list(eval_batches(split, batch=4, device="cpu"))
    assert [x.shape[0] for x, _ in batches] == [4, 2]
