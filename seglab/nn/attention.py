"""Attention as the generation-2 heads use it: softmax(q k^T * scale) v with named axes.

``attend`` runs it through ``F.scaled_dot_product_attention`` (SDPA), whose CPU and GPU kernels keep only q, k, v
and the output for backward, never the (n x m) weights; ``explicit=True`` writes the same product out with einsum
and keeps the weights, for comparison. On the CPU the memory-lean kernel needs contiguous 4D inputs (batch, heads,
n, d) with the same width for q, k and v; ``attend`` makes them so, and where v is wider than q and k it splits v
into groups of q's width that share q and k (``expand`` views, no copies). That recomputes q k^T once per group:
n m (g d + e) multiply-adds instead of n m (d + e), the price of not keeping the weights. The floor is a floor
for large n: SDPA keeps its (n, e) output, so for small groups of tokens (n < e, as in ISANet's blocks) the explicit
(n, m) weights are the smaller of the two.
"""

import math

import torch
import torch.nn.functional as F
from einops import rearrange


def attention_weights(q, k, scale=None):
    """softmax(q k^T * scale) over m: q (..., n, d), k (..., m, d) -> (..., n, m). For explorers and naive checks."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax(torch.einsum("...nd,...md->...nm", q, k) * scale, dim=-1)


def attend(q, k, v, scale=None, explicit=False):
    """softmax(q k^T * scale) v: q (b, n, d), k (b, m, d), v (b, m, e) -> (b, n, e); ``scale`` defaults to
    1/sqrt(d). Inputs may also carry a heads axis: (b, heads, n, d)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    if explicit:
        return torch.einsum("...nm,...me->...ne", attention_weights(q, k, scale), v)
    squeeze, shared = q.dim() == 3, v is k  # keys that are also the values are copied once
    if squeeze:  # SDPA's lean CPU kernel wants (b, heads, n, d)
        q, k, v = (rearrange(t, "b n d -> b 1 n d") for t in (q, k, v))
    # ... and contiguous tensors: on strided views (what rearrange makes of a conv's (b, c, h, w) output) it falls
    # back to the math path, which keeps the n x m weights. A copy of q, k, v is far smaller than those.
    q, k = q.contiguous(), k.contiguous()
    v = k if shared else v.contiguous()
    d, e = q.shape[-1], v.shape[-1]
    if e != d and e % d == 0:  # v wider than q, k: e/d groups of v's channels share q and k
        groups = e // d
        v = rearrange(v, "b h m (g d) -> b (h g) m d", g=groups)
        q, k = (t.repeat_interleave(groups, dim=1) if t.shape[1] > 1 else t.expand(-1, groups, -1, -1)
                for t in (q, k))
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        out = rearrange(out, "b (h g) n d -> b h n (g d)", g=groups)
    else:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return rearrange(out, "b 1 n e -> b n e") if squeeze else out
