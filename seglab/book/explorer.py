"""Query picking for the attention explorers of the attention chapters (11-17, 21-23): one rule, one label style.

An explorer shows, for a query cell of a head's feature grid, where that cell reads from. The chapters pick their
queries from the ground truth with :func:`pick_queries` on the labels of :func:`grid_labels`, mark them with
:func:`query_pixel` and label each view with :func:`view_label` (the VOC id and the query's class)."""

import torch

from seglab.data.voc import CLASSES, IGNORE


def grid_labels(mask, grid, cell):
    """The ground-truth class at the centre of every cell of a (grid, grid) feature map whose cells cover ``cell``
    pixels of the canvas: (grid, grid) long; 255 (void) for cells whose centre lies outside the image (the canvas
    is padded) and where the mask itself is void. ``mask``: (h, w), as ``split[i][1]`` returns it."""
    labels = torch.full((grid, grid), IGNORE, dtype=torch.long)
    centres = torch.arange(grid) * cell + cell // 2
    ys, xs = centres[centres < mask.shape[0]], centres[centres < mask.shape[1]]
    labels[: len(ys), : len(xs)] = torch.as_tensor(mask).long()[ys][:, xs]
    return labels


def pick_queries(labels):
    """The explorer's query cells of a (grid, grid) label map, as [(class, (row, col)), ...], by one rule:

    1. the object query: of the largest object class (most cells; the lower class id on a tie), the cell nearest
       that class's centroid;
    2. the background query: the background cell farthest from that centroid.

    An image without object cells gets only a background query, the background cell nearest the centroid of the
    image's valid cells; an image without background cells gets only the object query; nothing valid: []."""
    objects = labels[(labels > 0) & (labels < IGNORE)]
    background = torch.nonzero(labels == 0)
    if len(objects) == 0:
        valid = torch.nonzero(labels < IGNORE)
        if len(background) == 0:
            return []
        centre = valid.float().mean(0)
        return [(0, _cell(background[((background - centre) ** 2).sum(1).argmin()]))]
    c = int(torch.bincount(objects).argmax())  # argmax: the first maximum, so the lower class id on a tie
    inside = torch.nonzero(labels == c)
    centre = inside.float().mean(0)
    picks = [(c, _cell(inside[((inside - centre) ** 2).sum(1).argmin()]))]
    if len(background):
        picks.append((0, _cell(background[((background - centre) ** 2).sum(1).argmax()])))
    return picks


def _cell(rc):
    return tuple(int(v) for v in rc.tolist())


def query_pixel(rc, cell):
    """The canvas pixel (y, x) at the centre of grid cell ``rc`` = (row, col), for cells of ``cell`` pixels."""
    row, col = rc
    return row * cell + cell // 2, col * cell + cell // 2


def flat_index(rc, grid):
    """The position of cell (row, col) in a flattened (grid * grid) map: row * grid + col."""
    row, col = rc
    return row * grid + col


def view_label(split, i, cls):
    """The explorer's label of a view: "<VOC id>: query on <class>", e.g. "2007_000799: query on horse"; ``i`` is
    the image's index in ``split`` (``split.ids[i]`` is its VOC id) and ``cls`` the query's class id (or name)."""
    name = cls if isinstance(cls, str) else CLASSES[int(cls)]
    return f"{split.ids[i]}: query on {name}"
