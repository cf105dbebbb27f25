import dataclasses
import math

import pytest
import torch

from seglab import mode as modes
from seglab.backbones.resnet import resnet18
from seglab.data.voc import load_split
from seglab.heads.fcn import FCNHead
from seglab.model import Segmentor, auxiliary_head
from seglab.nn.losses import seg_loss
from seglab.train import evaluate, poly_lr, predict, seed_everything, train


def tiny_mode(**changes):
    settings = dict(image_size=32, crop=24, batch=2, iters=3, val_images=None, eval_batch=2)
    return dataclasses.replace(modes.quick("cpu"), **{**settings, **changes})


def tiny_model(seed=0):
    seed_everything(seed)
    backbone = resnet18()
    return Segmentor(backbone, FCNHead(512, 16, 21), auxiliary_head(backbone, 21))


def test_segmentor_returns_logits_at_image_size_and_aux_loss_counts():
    model = tiny_model()
    x, masks = torch.randn(2, 3, 40, 56), torch.randint(0, 21, (2, 40, 56))
    assert model(x).shape == (2, 21, 40, 56)
    with_aux = model.loss(x, masks)
    model.aux_head = None
    assert not torch.isclose(with_aux, model.loss(x, masks))


def test_images_the_backbone_cannot_take_are_refused_clearly():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match=r"\(5, 40\) pixels, smaller than the backbone's output stride 8"):
        model(torch.randn(1, 3, 5, 40))
    with pytest.raises(ValueError, match=r"must be \(batch, 3, height, width\), got \(3, 40, 40\)"):
        model(torch.randn(3, 40, 40))
    with pytest.raises(ValueError, match="Masks .* do not match images"):
        model.loss(torch.randn(1, 3, 40, 40), torch.zeros(1, 20, 20, dtype=torch.long))


def test_loss_ignores_void():
    logits = torch.randn(1, 3, 2, 2)
    masks = torch.tensor([[[0, 1], [255, 255]]])
    expected = torch.nn.functional.cross_entropy(logits.flatten(2)[..., :2], masks.flatten(1)[:, :2])
    assert torch.isclose(seg_loss(logits, masks), expected)


def test_poly_schedule():
    assert poly_lr(0.01, 0, 100) == pytest.approx(0.01)
    assert poly_lr(0.01, 100, 100) == pytest.approx(1e-4)
    assert poly_lr(0.01, 10, 100) > poly_lr(0.01, 50, 100)


def test_train_history_evaluate_and_predict(devkit):
    mode = tiny_mode()
    train_split, val_split = load_split("train", 32, progress=False), load_split("val", 32, progress=False)
    model = tiny_model()
    history = train(model, train_split, mode, progress=False)
    assert set(history) == {"loss", "lr", "time", "images_per_s", "terms"} and len(history["loss"]) == 3
    assert set(history["terms"]) == {"ce", "aux"}  # the head's loss and the auxiliary head's, by name
    assert history["lr"][0] > history["lr"][-1] and all(t > 0 for t in history["time"])
    metrics = evaluate(model, val_split, mode, progress=False)
    assert 0 <= metrics["miou"] <= 1 and metrics["images"] == 4 and len(metrics["iou"]) == 21
    image = val_split[0][0]
    assert predict(model, image).shape == image.shape[1:]


def test_same_seed_same_metrics(devkit):
    mode = tiny_mode()
    train_split, val_split = load_split("train", 32, progress=False), load_split("val", 32, progress=False)
    runs = []
    for _ in range(2):
        model = tiny_model(seed=1)
        history = train(model, train_split, mode, seed=1, progress=False)
        runs.append((history["loss"], evaluate(model, val_split, mode, progress=False)["iou"]))
    assert runs[0][0] == runs[1][0]  # losses, bit for bit
    torch.testing.assert_close(torch.tensor(runs[0][1]), torch.tensor(runs[1][1]), rtol=0, atol=0, equal_nan=True)


def test_nan_loss_stops_training_with_the_iteration(devkit):
    mode = tiny_mode(lr=1e30)
    split = load_split("train", 32, progress=False)
    with pytest.raises(FloatingPointError, match=r"at iteration \d+ of 3"):
        train(tiny_model(), split, dataclasses.replace(mode, iters=3), progress=False)


def test_out_of_memory_names_batch_and_crop(devkit, monkeypatch):
    model = tiny_model()

    def boom(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(model, "losses", boom)
    with pytest.raises(torch.OutOfMemoryError, match="batch 2 and crop 24x24.*Lower the batch size or the crop"):
        train(model, load_split("train", 32, progress=False), tiny_mode(), progress=False)


def test_out_of_memory_in_evaluation_names_the_evaluation_batch(devkit, monkeypatch):
    model = tiny_model()

    def boom(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model, "forward", boom)
    with pytest.raises(torch.OutOfMemoryError, match="evaluating batches of .* Lower the evaluation batch") as info:
        evaluate(model, load_split("val", 32, progress=False), tiny_mode(), progress=False)
    assert "Tried to allocate" in str(info.value.__cause__)  # torch's own message is kept


def test_training_refuses_a_batch_of_one(devkit):
    with pytest.raises(ValueError, match="batch of at least 2 .got 1.: BatchNorm"):
        train(tiny_model(), load_split("train", 32, progress=False), tiny_mode(batch=1), progress=False)


def test_mode_selection(monkeypatch):
    monkeypatch.setenv("SEGLAB_MODE", "quick")
    assert modes.current().name == "quick"
    monkeypatch.setenv("SEGLAB_MODE", "fast")
    with pytest.raises(ValueError, match="not a mode"):
        modes.current()
    monkeypatch.setenv("SEGLAB_MODE", "brief")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        modes.current()
    monkeypatch.delenv("SEGLAB_MODE")
    monkeypatch.delenv("CI", raising=False)  # CI itself would choose ci mode
    assert modes.current().name == "quick" and modes.quick().channels(512) == 64
    assert modes.quick().frozen and not modes.brief().frozen and "frozen" in modes.quick().describe()


def toy_features(n=4, bad=None):
    """A small FeatureSet (levels C2..C5 of 8, 16, 32, 64 channels on a 32-pixel canvas); ``bad`` = (level, sample,
    value) puts one non-finite value in."""
    from seglab.data.features import FeatureSet
    generator = torch.Generator().manual_seed(0)
    levels = [torch.randn(n, c, 32 // s, 32 // s, generator=generator).half()
              for c, s in zip((8, 16, 32, 64), (4, 8, 16, 32))]
    if bad is not None:
        level, sample, value = bad
        levels[level][sample, 0, 0, 0] = value
    masks = torch.randint(0, 21, (n, 32, 32), generator=generator).to(torch.uint8)
    return FeatureSet([f"id{i}" for i in range(n)], torch.zeros(n, dtype=torch.bool), levels, masks,
                      torch.tensor([[0, 0, 32, 32]] * n))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_training_and_scoring_refuse_non_finite_features(value):
    from seglab.train import evaluate_head, train_head
    mode = tiny_mode(crop=None)
    head = FCNHead(64, 8, 21)
    features = toy_features(bad=(2, 3, value))
    with pytest.raises(ValueError, match=r"train features hold NaN or infinite values \(level 2, sample\(s\) \[3\]\)"):
        train_head(head, features, mode, progress=False)
    with pytest.raises(ValueError, match=r"val features hold NaN or infinite values \(level 2, sample\(s\) \[3\]\)"):
        evaluate_head(head, features, mode, progress=False)
    with pytest.raises(ValueError, match="val features hold NaN"):  # a damaged set, whichever part is scored
        evaluate_head(head, features, tiny_mode(val_images=3), progress=False)
    history = train_head(head, toy_features(), mode, progress=False)  # finite features train as before
    assert len(history["loss"]) == 3 and all(map(math.isfinite, history["loss"]))


def test_training_and_scoring_refuse_non_finite_images():
    from seglab.data.voc import VOCSplit
    images = torch.rand(4, 3, 32, 32) * 255
    images[1, 2, 5, 5] = float("nan")
    split = VOCSplit([f"id{i}" for i in range(4)], images, torch.zeros(4, 32, 32, dtype=torch.uint8),
                     torch.tensor([[32, 32]] * 4))
    with pytest.raises(ValueError, match=r"train images hold NaN or infinite values \(sample\(s\) \[1\]\)"):
        train(tiny_model(), split, tiny_mode(), progress=False)
    with pytest.raises(ValueError, match=r"val images hold NaN or infinite values \(sample\(s\) \[1\]\)"):
        evaluate(tiny_model(), split, tiny_mode(), progress=False)
