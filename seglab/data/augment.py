"""Training batches built on the device from the in-memory uint8 split, so a GPU stays busy on 2 CPU cores.

One ``grid_sample`` per batch does random scale, random crop (padding the mask with 255) and horizontal flip;
light photometric jitter follows, then ImageNet normalisation.
"""

import torch
import torch.nn.functional as F
from einops import rearrange

from seglab.data.voc import IGNORE

MEAN = torch.tensor([123.675, 116.28, 103.53])  # ImageNet statistics on the 0..255 scale
STD = torch.tensor([58.395, 57.12, 57.375])


def normalize(images):
    """uint8 or float (b, 3, h, w) on 0..255 -> float, ImageNet-normalised."""
    mean, std = MEAN.to(images.device).view(1, 3, 1, 1), STD.to(images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std


def crop_grid(sizes, canvas, crop, scale, flip, offset):
    """Sampling grid (b, crop, crop, 2) mapping each crop pixel to its source point on the padded canvas.

    Crop pixel v (centre v + 0.5) sits at (offset + v + 0.5) in the image scaled by ``scale``, i.e. at
    (offset + v + 0.5) / scale in the source; a flipped sample mirrors x inside its own width."""
    v = torch.arange(crop, dtype=torch.float32) + 0.5  # (crop,)
    src = (offset[:, :, None] + v) / scale[:, None, None]  # (b, 2, crop): y and x source coordinates
    width = sizes[:, 1].float()[:, None]
    src[:, 1] = torch.where(flip[:, None], width - src[:, 1], src[:, 1])
    norm = 2 * src / canvas - 1  # align_corners=False convention
    y, x = norm[:, 0], norm[:, 1]
    return torch.stack(torch.broadcast_tensors(x[:, None, :], y[:, :, None]), dim=-1)  # (b, crop, crop, [x, y])


def augment(images, masks, sizes, crop, generator, scale_range=(0.5, 2.0), jitter=True):
    """Random scale, crop, flip and jitter of a uint8 batch already on its device.

    images (b, 3, S, S) uint8, masks (b, S, S) uint8 (255 outside the image), sizes (b, 2) true (h, w).
    Returns normalised float images (b, 3, crop, crop) and int64 masks (b, crop, crop)."""
    b, device = images.shape[0], images.device
    lo, hi = scale_range
    scale = lo + (hi - lo) * torch.rand(b, generator=generator)
    room = (sizes.float() * scale[:, None] - crop).clamp(min=0)  # (b, 2) how far the crop may slide
    offset = (torch.rand(b, 2, generator=generator) * room).floor()
    flip = torch.rand(b, generator=generator) < 0.5
    grid = crop_grid(sizes.cpu(), images.shape[-1], crop, scale, flip, offset).to(device)
    x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # sample mask+1 with zero padding: 0 marks "outside", which becomes void
    m = F.grid_sample(masks[:, None].float() + 1, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    m = rearrange(m, "b 1 h w -> b h w").long() - 1
    m[m < 0] = IGNORE
    if jitter:
        x = photometric_jitter(x, generator)
    return normalize(x), m


def photometric_jitter(x, generator, brightness=20.0, contrast=0.2, saturation=0.2):
    """Light per-image brightness, contrast and saturation changes on a float (b, 3, h, w) 0..255 batch."""
    b = x.shape[0]

    def draw(spread):
        return (1 + spread * (2 * torch.rand(b, generator=generator) - 1)).to(x.device).view(b, 1, 1, 1)

    x = x + brightness * (2 * torch.rand(b, generator=generator) - 1).to(x.device).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * draw(contrast) + mean
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * draw(saturation) + gray
    return x.clamp(0, 255)


def epoch_batches(n, batch, iters, generator):
    """Yield ``iters`` index tensors of ``batch`` samples out of ``n``, walking seeded random epochs (a batch may
    straddle two). Lazy: each epoch's permutation is drawn from ``generator`` when it is reached."""
    order = []
    for _ in range(iters):
        while len(order) < batch:
            order += torch.randperm(n, generator=generator).tolist()
        index, order = torch.tensor(order[:batch]), order[batch:]
        yield index


def train_batches(split, batch, iters, crop, device, seed=0):
    """Yield ``iters`` augmented batches (images, masks) on ``device``, walking the split in seeded epochs."""
    generator = torch.Generator().manual_seed(seed)
    for index in epoch_batches(len(split), batch, iters, generator):
        images = split.images[index].to(device, non_blocking=True)
        masks = split.masks[index].to(device, non_blocking=True)
        yield augment(images, masks, split.sizes[index], crop, generator)


def eval_batches(split, batch, device, limit=None):
    """Validation batches: the padded canvas as it is (fixed size), the padding marked void in the masks."""
    n = len(split) if limit is None else min(limit, len(split))
    for start in range(0, n, batch):
        index = slice(start, min(start + batch, n))
        yield normalize(split.images[index].to(device)), split.masks[index].to(device).long()
