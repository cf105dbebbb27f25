import math

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
