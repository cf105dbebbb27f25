"""The one place that decides how a chapter runs: ``quick`` (CPU) or ``brief`` (CUDA).

``SEGLAB_MODE=quick|brief`` overrides the automatic choice (brief when CUDA is available).
"""

import os
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Mode:
    name: str
    device: str
    backbone: str  # "resnet18" or "resnet50", always output stride 8 ("D8")
    width: float  # head channels relative to the reference configuration
    image_size: int  # images are decoded with their long side at most this
    crop: int  # square training crop
    batch: int
    iters: int
    lr: float
    val_images: int | None  # None: every validation image
    eval_batch: int
    latency_repeats: int

    def as_dict(self):
        return asdict(self)

    def channels(self, reference):
        """A head's channel count in this mode: the reference one scaled by ``width`` (at least 8)."""
        return max(8, int(reference * self.width))


def quick(device="cpu"):
    """CPU smoke-run: ResNet-18-D8 on small images, a few dozen iterations (about a minute on 2 cores)."""
    return Mode(name="quick", device=device, backbone="resnet18", width=0.25, image_size=160, crop=128, batch=8,
                iters=40, lr=0.02, val_images=48, eval_batch=16, latency_repeats=2)


def brief(device="cuda"):
    """GPU run: ResNet-50-D8 at the literature's 512x512 crop, a schedule meant for a few minutes on a T4."""
    return Mode(name="brief", device=device, backbone="resnet50", width=1.0, image_size=512, crop=512, batch=8,
                iters=300, lr=0.01, val_images=None, eval_batch=8, latency_repeats=20)


def current():
    """The mode this process runs in: ``SEGLAB_MODE`` if set, else brief on CUDA and quick on CPU."""
    name = os.environ.get("SEGLAB_MODE", "").strip().lower()
    cuda = torch.cuda.is_available()
    if name == "":
        name = "brief" if cuda else "quick"
    if name == "quick":
        return quick("cuda" if cuda else "cpu")
    if name == "brief":
        if not cuda:
            raise RuntimeError("SEGLAB_MODE=brief needs a CUDA GPU and none is visible; "
                               "unset SEGLAB_MODE or set SEGLAB_MODE=quick to run on the CPU.")
        return brief("cuda")
    raise ValueError(f"SEGLAB_MODE={name!r} is not a mode; use 'quick' (CPU) or 'brief' (CUDA).")
