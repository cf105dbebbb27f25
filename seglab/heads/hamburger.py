# Generated from chapters/28_hamburger.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""SegNeXt's decode head (Guo et al., NeurIPS 2022), ``LightHamHead``: the Hamburger of Geng et al. (ICLR 2021)
with non-negative matrix factorisation as its "ham", configured as mmsegmentation's ``segnext_mscan-t``."""

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from seglab.nn.blocks import check_count, classifier, resize_concat

EPS = 1e-6  # mmseg's NMF2D adds it to every denominator of the multiplicative updates


def update_coef(x, bases, coef):
    """One multiplicative update of the coefficients C (Lee and Seung): C <- C * (X^T D) / (C D^T D).
    x (b, d, n) non-negative, bases D (b, d, r), coef C (b, n, r)."""
    numerator = einsum(x, bases, "b d n, b d r -> b n r")
    gram = einsum(bases, bases, "b d r, b d s -> b r s")  # D^T D: (b, r, r)
    return coef * numerator / (einsum(coef, gram, "b n s, b s r -> b n r") + EPS)


def update_bases(x, bases, coef):
    """One multiplicative update of the bases D: D <- D * (X C) / (D C^T C)."""
    numerator = einsum(x, coef, "b d n, b n r -> b d r")
    gram = einsum(coef, coef, "b n r, b n s -> b r s")  # C^T C: (b, r, r)
    return bases * numerator / (einsum(bases, gram, "b d s, b s r -> b d r") + EPS)


def nmf_step(x, bases, coef):
    """One step of mmseg's ``NMF2D.local_step``: the coefficients first, then the bases with the new coefficients."""
    coef = update_coef(x, bases, coef)
    return update_bases(x, bases, coef), coef


class NMF(nn.Module):
    """The ham: X (d x n, one column per pixel, non-negative) ~ D C^T with r bases, found by multiplicative updates
    from random bases, without parameters. Initial coefficients softmax(inv_t X^T D) over the r bases, then
    ``train_steps`` (training) or ``eval_steps`` (evaluation) steps of ``nmf_step`` and one more coefficient update
    (mmseg's ``compute_coef``); returns the low-rank reconstruction D C^T.

    ``one_step=False`` (mmseg): autograd records every step. ``one_step=True`` (the paper's one-step gradient, as
    in the authors' HamNet code): the steps run under ``torch.no_grad`` and only the last coefficient update
    carries a gradient.

    Bases: in training, ``torch.rand`` from the global generator (seeded by ``seed_everything``) for every image,
    as mmseg's ``rand_init=True`` draws them. In evaluation, ``eval_bases="fixed"`` (default) draws one set from a
    generator seeded with ``seed`` at every forward, the same for every image, so predictions do not depend on the
    random state; ``eval_bases="random"`` draws them anew, as mmseg does."""

    def __init__(self, rank=16, train_steps=6, eval_steps=7, inv_t=1.0, one_step=False, eval_bases="fixed", seed=0):
        super().__init__()
        if eval_bases not in ("fixed", "random"):
            raise ValueError(f"eval_bases must be 'fixed' or 'random', got {eval_bases!r}.")
        self.rank = check_count(rank, "rank", "the number of NMF bases (mmseg's MD_R)")
        for name, steps in [("train_steps", train_steps), ("eval_steps", eval_steps)]:
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise ValueError(f"{name} must be an integer of at least 0, got {steps!r}.")
        self.train_steps, self.eval_steps, self.inv_t = train_steps, eval_steps, inv_t
        self.one_step, self.eval_bases, self.seed = one_step, eval_bases, seed

    def initial_bases(self, batch, dim, device):
        """(batch, dim, rank) uniform random bases with unit columns (mmseg's ``NMF2D._build_bases``)."""
        if self.training or self.eval_bases == "random":
            bases = torch.rand(batch, dim, self.rank, device=device)
        else:
            generator = torch.Generator().manual_seed(self.seed)
            bases = torch.rand(1, dim, self.rank, generator=generator).to(device).expand(batch, -1, -1)
        return F.normalize(bases, dim=1)

    def decompose(self, x, bases=None):
        """x (b, d, n) -> (bases D (b, d, r), coefficients C (b, n, r)), from ``bases`` if given."""
        bases = self.initial_bases(x.shape[0], x.shape[1], x.device) if bases is None else bases
        steps = self.train_steps if self.training else self.eval_steps
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.one_step):
            coef = torch.softmax(self.inv_t * einsum(x, bases, "b d n, b d r -> b n r"), dim=-1)
            for _ in range(steps):
                bases, coef = nmf_step(x, bases, coef)
        return bases, update_coef(x, bases, coef)  # the last coefficient update: with gradient in both modes

    def forward(self, x):
        h, w = x.shape[-2:]
        bases, coef = self.decompose(rearrange(x, "b d h w -> b d (h w)"))
        return rearrange(einsum(bases, coef, "b d r, b n r -> b d n"), "b d (h w) -> b d h w", h=h, w=w)


class ConvGN(nn.Sequential):
    """mmcv's ``ConvModule`` with GroupNorm: a 1x1 conv without bias, GroupNorm, optionally ReLU; Kaiming normal
    (fan-out) as ``ConvModule`` initialises its conv."""

    def __init__(self, in_channels, out_channels, num_groups=32, relu=True):
        if out_channels % num_groups:
            raise ValueError(f"GroupNorm of {num_groups} groups needs channels divisible by {num_groups}, got "
                             f"{out_channels}; choose channels and ham_channels that are multiples of num_groups.")
        layers = [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.GroupNorm(num_groups, out_channels)]
        super().__init__(*(layers + [nn.ReLU(inplace=True)] if relu else layers))
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")


class Hamburger(nn.Module):
    """Lower bread, ham, upper bread: a 1x1 conv with bias and ReLU (``ham_in``), the NMF reconstruction, a 1x1
    Conv-GN (``ham_out``), and a residual sum with ReLU."""

    def __init__(self, channels=256, num_groups=32, **nmf):
        super().__init__()
        self.ham_in = nn.Conv2d(channels, channels, 1)  # ConvModule without norm: bias on, no activation
        nn.init.kaiming_normal_(self.ham_in.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.ham_in.bias)
        self.ham = NMF(**nmf)
        self.ham_out = ConvGN(channels, channels, num_groups, relu=False)

    def forward(self, x):
        enjoy = self.ham(F.relu(self.ham_in(x)))  # NMF needs a non-negative input: the ReLU
        return F.relu(x + self.ham_out(enjoy))


class LightHamHead(nn.Module):
    """SegNeXt's head: the levels ``in_index`` resized to the first one's grid and concatenated, a 1x1 Conv-GN-ReLU
    to ``ham_channels`` (``squeeze``), the Hamburger, a 1x1 Conv-GN-ReLU to ``channels`` (``align``), dropout and a
    1x1 classifier. Logits at the first chosen level's resolution (stride 8 for MSCAN's [C3, C4, C5])."""

    def __init__(self, in_channels=(64, 160, 256), channels=256, ham_channels=256, num_classes=21, in_index=(1, 2, 3),
                 rank=16, train_steps=6, eval_steps=7, inv_t=1.0, num_groups=32, dropout=0.1, one_step=False,
                 eval_bases="fixed", seed=0):
        super().__init__()
        if len(in_channels) != len(in_index):
            raise ValueError(f"in_channels {tuple(in_channels)} and in_index {tuple(in_index)} must have one entry "
                             "per level the head reads.")
        self.in_channels, self.in_index = tuple(in_channels), tuple(in_index)
        self.squeeze = ConvGN(sum(self.in_channels), ham_channels, num_groups)
        self.hamburger = Hamburger(ham_channels, num_groups, rank=rank, train_steps=train_steps,
                                   eval_steps=eval_steps, inv_t=inv_t, one_step=one_step, eval_bases=eval_bases,
                                   seed=seed)
        self.align = ConvGN(ham_channels, channels, num_groups)
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, features):
        x = resize_concat(features, self.in_index, self.in_channels)  # (b, sum in_channels, h, w), checked
        return self.cls(self.align(self.hamburger(self.squeeze(x))))  # (b, num_classes, h, w)

    @torch.no_grad()
    def maps(self, features):
        """For explorers: the NMF's coefficient maps (b, r, h, w), one per basis (how much of each basis every pixel
        takes), and the bases (b, ham_channels, r), as the head computes them in its current mode."""
        x = self.squeeze(resize_concat(features, self.in_index, self.in_channels))
        burger = self.hamburger
        enjoy = F.relu(burger.ham_in(x))
        bases, coef = burger.ham.decompose(rearrange(enjoy, "b d h w -> b d (h w)"))
        return rearrange(coef, "b (h w) r -> b r h w", h=x.shape[-2], w=x.shape[-1]), bases
