import math

import pytest
import torch

from seglab.metrics import confusion_matrix, scores


def test_miou_matches_a_hand_computation_with_void():
    target = torch.tensor([[0, 0, 1, 1],
                           [0, 255, 1, 2]])
    pred = torch.tensor([[0, 1, 1, 1],
                         [2, 0, 1, 2]])  # the prediction under void (0) must not count
    cm = confusion_matrix(pred, target, num_classes=4)
    assert cm.sum() == 7  # 8 pixels, one void
    assert cm.tolist() == [[1, 1, 1, 0], [0, 3, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    s = scores(cm)
    # class 0: tp 1, union 3 + 1 - 1 = 3; class 1: tp 3, union 3 + 4 - 3 = 4; class 2: tp 1, union 1 + 2 - 1 = 2
    assert math.isclose(s["iou"][0], 1 / 3) and math.isclose(s["iou"][1], 3 / 4) and math.isclose(s["iou"][2], 1 / 2)
    assert math.isnan(s["iou"][3])  # absent from truth and prediction: left out of the mean
    assert math.isclose(s["miou"], (1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert math.isclose(s["pixel_acc"], 5 / 7)


def test_all_void_gives_nan_not_a_crash():
    cm = confusion_matrix(torch.zeros(3, 3, dtype=torch.long), torch.full((3, 3), 255), 21)
    assert cm.sum() == 0 and math.isnan(scores(cm)["miou"])


def test_predictions_outside_the_classes_are_refused():
    """A 40-class head scored as 21 classes: its class 30 must not be counted in a wrong cell."""
    target = torch.tensor([[0, 1], [2, 255]])
    with pytest.raises(ValueError, match=r"Predicted classes range over 0..30, outside 0..20 for num_classes=21"):
        confusion_matrix(torch.tensor([[0, 30], [2, 1]]), target, 21)
    with pytest.raises(ValueError, match=r"Predicted classes range over -1..2"):
        confusion_matrix(torch.tensor([[0, -1], [2, 1]]), target, 21)
    assert confusion_matrix(torch.tensor([[0, 1], [2, 40]]), target, 21).sum() == 3  # under void: not scored


def test_labels_outside_the_classes_are_refused_but_void_is_not():
    pred = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"Target labels range over 0..21 \(void 255 left out\), outside 0..20"):
        confusion_matrix(pred, torch.tensor([[0, 21], [1, 255]]), 21)
    with pytest.raises(ValueError, match="Target labels range over -3..1"):
        confusion_matrix(pred, torch.tensor([[0, -3], [1, 255]]), 21)


@pytest.mark.parametrize("num_classes", [2.5, 0, True])
def test_num_classes_must_be_a_positive_integer(num_classes):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), num_classes)


def test_float_or_mismatched_maps_are_refused():
    with pytest.raises(ValueError, match="integer class maps"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), 21)
    with pytest.raises(ValueError, match=r"\(2, 2\) and targets \(2, 3\)"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), 21)
