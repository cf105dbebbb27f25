import torch

from seglab.book.oracle import oracle, stride_oracle


def test_a_mask_aligned_with_the_stride_is_its_own_oracle_and_void_never_wins():
    mask = torch.zeros(8, 8, dtype=torch.long)
    mask[:4, :4] = 3
    mask[6:, :] = 255  # void: votes for nothing, scored by nothing
    assert torch.equal(oracle(mask, 1)[:6], mask[:6])
    assert oracle(mask, 4).max() < 255


def test_coarser_strides_lose_thin_structures():
    mask = torch.zeros(16, 16, dtype=torch.long)
    mask[:, 8:10] = 5  # a 2-pixel-wide bar on the stride-2 grid, inside one cell of the stride-8 grid

    class Split(list):
        pass

    split = Split([(None, mask)])
    assert stride_oracle(split, 1) == 1.0
    assert stride_oracle(split, 2) == 1.0 and stride_oracle(split, 8) < 0.5
