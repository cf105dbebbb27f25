"""Reliability of the data path: concurrent and stuck downloads, ``python -m seglab.data.download``, cached hub
weights, re-indexed palette masks, unreadable files and split files, and ``SEGLAB_CACHE``."""

import hashlib
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglab import backbones
from seglab.backbones import resnet as bb
from seglab.data import download as dl
from seglab.data import voc
from tests.conftest import save_mask, write_voc
from tests.data.test_download import MD5, PAYLOAD, voc_tar

ROOT = Path(__file__).resolve().parents[2]


def serve(handler):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_port}"


# --- 2. two downloads or extractions at once ------------------------------------------------------------------

def test_two_processes_fetching_at_once_download_and_extract_once(tmp_path):
    tar = voc_tar(tmp_path)
    body, requests, first = tar.read_bytes(), [], threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.headers.get("Range"))
            first.set()
            time.sleep(1.5)  # the second process starts meanwhile and must wait for the first one's lock
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(0, len(body), 4096):
                self.wfile.write(body[i:i + 4096])
                time.sleep(0.01)

    httpd, base = serve(Slow)
    cache = tmp_path / "cache"
    script = ("import sys; from seglab.data.download import fetch_voc; "
              "print('RESULT', fetch_voc(sys.argv[1], urls=[sys.argv[2]], md5=sys.argv[3]))")
    command = [sys.executable, "-c", script, str(cache), f"{base}/voc.tar", hashlib.md5(body).hexdigest()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        one = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert first.wait(60), "the first process never asked for the archive"
        two = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        outs = [p.communicate(timeout=120) for p in (one, two)]
    finally:
        httpd.shutdown()
    for p, (out, err) in zip((one, two), outs):
        assert p.returncode == 0, err
        assert f"RESULT {cache / 'VOCdevkit'}" in out
    printed = outs[0][0] + outs[1][0]
    assert len(requests) == 1  # downloaded once
    assert printed.count("Extracting the segmentation part") == 1  # extracted once
    assert "already in" in outs[1][0]  # the second one reused the first one's devkit
    got = sorted(str(p.relative_to(cache)) for p in (cache / "VOCdevkit").rglob("*") if p.is_file())
    assert got == sorted(f"VOCdevkit/VOC2012/{sub}" for sub in
                         ["ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt"]
                         + [f"{d}/2007_{s}.{e}" for s in ("train000", "train001", "val000")
                            for d, e in (("JPEGImages", "jpg"), ("SegmentationClass", "png"))])
    assert not (cache / dl.VOC_TAR).exists() and not list(cache.glob("VOCdevkit.extracting*"))


def test_extraction_uses_a_folder_of_its_own_and_leaves_another_ones_alone(tmp_path):
    other = tmp_path / "out" / "VOCdevkit.extracting"  # the fixed name another process used to wipe
    (other / "half").mkdir(parents=True)
    devkit = dl.safe_extract(voc_tar(tmp_path), tmp_path / "out" / "VOCdevkit")
    assert (devkit / "VOC2012" / "SegmentationClass").is_dir() and (other / "half").is_dir()


def test_an_existing_folder_without_voc2012_is_refused_clearly(tmp_path):
    (tmp_path / "cache" / "VOCdevkit" / "junk").mkdir(parents=True)
    tar = voc_tar(tmp_path)
    with pytest.raises(dl.DownloadError, match="already exists but holds no VOC2012 folder. Delete or move it"):
        dl.fetch_voc(tmp_path / "cache", urls=[tar.as_uri()], md5=hashlib.md5(tar.read_bytes()).hexdigest())
    assert not list((tmp_path / "cache").glob("VOCdevkit.extracting*"))


# --- 7. a full-size part file that was never verified -----------------------------------------------------------

@pytest.fixture
def ranged():
    """/good serves PAYLOAD, honours Range, and answers 416 to a Range that starts at or past its end."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append(self.headers.get("Range"))
            start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(PAYLOAD) - start))
            self.end_headers()
            self.wfile.write(PAYLOAD[start:])

    httpd, base = serve(Handler)
    yield f"{base}/good", seen
    httpd.shutdown()


def test_a_complete_verified_part_file_is_used_without_downloading(tmp_path, capsys):
    (tmp_path / "f.tar.part").write_bytes(PAYLOAD)  # e.g. killed during its MD5 check
    dest = dl.download(["http://127.0.0.1:9/unreachable"], tmp_path / "f.tar", MD5, timeout=5)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "f.tar.part").exists()
    assert "is complete and its MD5 matches; using it" in capsys.readouterr().out


@pytest.mark.parametrize("stale", [PAYLOAD[::-1], PAYLOAD + b"extra"], ids=["full-size", "oversized"])
def test_a_full_size_corrupt_part_file_is_deleted_and_fetched_again(ranged, tmp_path, capsys, stale):
    url, seen = ranged
    (tmp_path / "f.tar.part").write_bytes(stale)
    dest = dl.download([url], tmp_path / "f.tar", MD5, timeout=5)
    assert dest.read_bytes() == PAYLOAD
    assert seen == [f"bytes={len(stale)}-", None]  # asked to resume, got 416, started over
    out = capsys.readouterr().out
    assert "its MD5 does not match: deleted f.tar.part" in out and "downloading again from the start" in out


# --- 8. python -m seglab.data.download finds existing data and is idempotent -----------------------------------------

def no_download(*args, **kwargs):
    raise AssertionError("downloaded although the data was there")


def test_the_command_finds_seglab_data_and_downloads_nothing(tmp_path, monkeypatch, capsys):
    devkit = write_voc(tmp_path / "data", train=1, val=1)
    monkeypatch.setenv("SEGLAB_DATA", str(devkit))
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dl, "download", no_download)
    assert dl.main([]) == devkit
    assert f"found through SEGLAB_DATA: {devkit}. Nothing to download." in capsys.readouterr().out
    assert not (tmp_path / "cache").exists()


def test_the_command_with_a_wrong_seglab_data_says_so_and_downloads_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dl, "download", no_download)
    with pytest.raises(SystemExit, match="(?s)SEGLAB_DATA points to .*nowhere.*nothing was downloaded"):
        dl.main([])


def test_the_command_is_idempotent(tmp_path, monkeypatch, capsys):
    tar = voc_tar(tmp_path)
    monkeypatch.delenv("SEGLAB_DATA", raising=False)
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dl, "VOC_MIRRORS", (tar.as_uri(),))
    monkeypatch.setattr(dl, "VOC_MD5", hashlib.md5(tar.read_bytes()).hexdigest())
    devkit = dl.main([])
    assert devkit == tmp_path / "cache" / "VOCdevkit" and (devkit / "VOC2012" / "SegmentationClass").is_dir()
    capsys.readouterr()
    tar.unlink()  # a second download would now fail
    monkeypatch.setattr(dl, "download", no_download)
    for _ in range(2):
        assert dl.main([]) == devkit
        assert f"found in the cache: {devkit}. Nothing to download." in capsys.readouterr().out
    dest = tmp_path / "dest"  # an explicit destination that already holds the data
    dest.mkdir()
    devkit.rename(dest / "VOCdevkit")
    assert dl.main([str(dest)]) == dest / "VOCdevkit"


# --- 10. cached torch.hub weights are verified on every load ---------------------------------------------------

@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty TORCH_HOME whose downloads fail; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))

    def refuse(url, *args, **kwargs):
        raise OSError(f"offline (test): {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    checkpoints = tmp_path / "home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints


def test_a_planted_checkpoint_in_the_hub_cache_is_not_taken_for_imagenet_weights(offline_hub):
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in backbones.create("resnet18").state_dict()
             .items()}
    planted = offline_hub / Path(bb.WEIGHTS["resnet18"]).name  # resnet18-f37072fd.pth, but not torchvision's
    torch.save(state, planted)
    with pytest.warns(bb.PretrainedWeightsUnavailable, match=r"sha256 \([0-9a-f]{12}\.\.\.\) does not start with "
                                                             r"f37072fd.*may be corrupt: delete it.*RANDOM"):
        net = bb.resnet18(pretrained=True)
    assert net.pretrained is False and not torch.all(net.layer4[1].bn2.weight == 0.5)


def test_a_checkpoint_that_does_not_fit_is_refused_before_any_tensor_is_loaded(tmp_path, offline_hub, monkeypatch):
    raw = tmp_path / "raw.pth"
    torch.save({"conv1.weight": torch.full((64, 3, 7, 7), 0.5), "other.weight": torch.zeros(1)}, raw)
    name = f"resnet18-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth"
    raw.rename(offline_hub / name)  # its hash is right: torch.hub loads it
    monkeypatch.setitem(bb.WEIGHTS, "resnet18", f"https://download.pytorch.org/models/{name}")
    with pytest.warns(bb.PretrainedWeightsUnavailable, match="does not fit resnet18: .* tensors missing, extra"):
        net = bb.resnet18(pretrained=True)
    assert net.pretrained is False and not torch.all(net.conv1.weight == 0.5)


def test_a_failure_without_a_message_still_gives_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))

    def truncated(url, **kwargs):
        raise EOFError()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", truncated)
    with pytest.warns(bb.PretrainedWeightsUnavailable, match=r"\(EOFError while reading the checkpoint\)"):
        assert bb.resnet18(pretrained=True).pretrained is False


# --- 6. a re-indexed palette mask ---------------------------------------------------------------------------------

def save_reindexed(path, stored, colours):
    im = Image.fromarray(stored.astype(np.uint8), mode="P")
    im.putpalette(np.asarray(colours, dtype=np.uint8).reshape(-1).tolist())
    im.save(path)


def classes_0_1_15_255():
    mask = np.zeros((12, 16), dtype=np.uint8)
    mask[2:10, 2:8], mask[2:10, 9:15], mask[0] = 1, 15, 255
    return mask


def test_a_reindexed_palette_mask_is_mapped_by_colour_with_a_warning(tmp_path):
    mask = classes_0_1_15_255()
    order = [0, 1, 15, 255]
    stored = np.searchsorted(order, mask)  # 0, 1, 15, 255 stored as 0, 1, 2, 3
    path = tmp_path / "reindexed.png"
    save_reindexed(path, stored, voc.PALETTE[order])
    with pytest.warns(UserWarning, match=r"reindexed.png is a re-indexed palette PNG.*\{2: 15, 3: 255\}"):
        got = voc.read_mask(path)
    assert np.array_equal(got.numpy(), mask)


def test_a_palette_mask_with_a_foreign_colour_is_refused(tmp_path):
    mask = classes_0_1_15_255()
    path = tmp_path / "foreign.png"
    save_reindexed(path, np.searchsorted([0, 1, 15, 255], mask), [[0, 0, 0], [128, 0, 0], [10, 200, 30], [1, 2, 3]])
    with pytest.raises(ValueError, match=r"foreign.png is a palette PNG whose entries are not VOC's colours.*"
                                         r"2: \(10, 200, 30\)"):
        voc.read_mask(path)


def test_masks_with_the_voc_palette_or_a_grey_ramp_are_read_as_they_are(tmp_path, recwarn):
    mask = classes_0_1_15_255()
    save_mask(mask, tmp_path / "voc.png")
    save_reindexed(tmp_path / "grey.png", mask, [[i, i, i] for i in range(256)])
    for name in ("voc.png", "grey.png"):
        assert np.array_equal(voc.read_mask(tmp_path / name).numpy(), mask), name
    assert not [w for w in recwarn if "palette" in str(w.message)]


# --- 13. unreadable files, damaged split files, SEGLAB_CACHE ------------------------------------------------------

@pytest.mark.parametrize("reader,what", [(voc.read_image, "image"), (voc.read_mask, "mask")])
def test_a_permission_denied_file_is_not_called_corrupt(devkit, monkeypatch, reader, what):
    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)
    path = voc.image_path(devkit, "2007_train000") if what == "image" else voc.mask_path(devkit, "2007_train000")
    with pytest.raises(PermissionError, match=rf"The {what} .* cannot be read \(permission denied\).*chmod a\+r") \
            as error:
        reader(path)
    assert "corrupt" not in str(error.value) and str(path) in str(error.value)


def test_a_binary_split_file_is_named(devkit):
    path = devkit / "VOC2012/ImageSets/Segmentation/train.txt"
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)))
    with pytest.raises(ValueError, match=f"{path} is not a text file of image ids"):
        voc.read_ids(devkit, "train")
    path.write_bytes(b"2007_000032\n\x00\x00\x00\n")  # valid UTF-8, still binary
    with pytest.raises(ValueError, match=f"{path} is not a text file of image ids.*NUL"):
        voc.read_ids(devkit, "train")


def test_a_split_file_that_is_a_folder_or_unreadable_is_named(devkit, monkeypatch):
    path = devkit / "VOC2012/ImageSets/Segmentation/val.txt"
    path.unlink()
    path.mkdir()
    with pytest.raises(ValueError, match=f"{path} is a folder, not a text file"):
        voc.read_ids(devkit, "val")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(PermissionError, match=r"train.txt cannot be read \(permission denied\).*chmod a\+r"):
        voc.read_ids(devkit, "train")


def test_duplicate_ids_in_a_split_file_are_dropped_with_a_warning(devkit):
    path = devkit / "VOC2012/ImageSets/Segmentation/train.txt"
    path.write_text("2007_train000\n2007_train001\n2007_train000\n2007_train002\n2007_train001\n2007_train000\n")
    with pytest.warns(UserWarning, match=rf"{path} lists 2 ids more than once \(2007_train000, 2007_train001\)"):
        ids = voc.read_ids(devkit, "train")
    assert ids == ["2007_train000", "2007_train001", "2007_train002"]


def test_seglab_cache_empty_means_the_default_and_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SEGLAB_CACHE", "")
    assert dl.cache_dir() == tmp_path / ".cache" / "seglab"
    monkeypatch.setenv("SEGLAB_CACHE", "~/elsewhere")
    assert dl.cache_dir() == tmp_path / "elsewhere"
