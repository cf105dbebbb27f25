import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from seglab.data import download as dl
from tests.conftest import write_voc

PAYLOAD = bytes(range(256)) * 400
MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    """A loopback HTTP server: /good (honours Range), /corrupt, /truncated. Records the Range headers it saw."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append((self.path, self.headers.get("Range")))
            body, status = PAYLOAD, 200
            if self.path == "/corrupt":
                body = PAYLOAD[::-1]
            start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") and self.path == "/good" else 0
            if start:
                body, status = body[start:], 206
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if self.path == "/truncated" else body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", seen
    httpd.shutdown()


def test_checksum_mismatch_moves_to_the_next_mirror(server, tmp_path):
    base, _ = server
    dest = dl.download([f"{base}/corrupt", f"{base}/good"], tmp_path / "f.tar", MD5, timeout=5)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "f.tar.part").exists()


def test_failure_lists_every_url_tried_and_leaves_no_complete_file(server, tmp_path):
    base, _ = server
    urls = [f"{base}/corrupt", f"{base}/truncated", "http://127.0.0.1:9/unreachable"]
    with pytest.raises(dl.DownloadError) as error:
        dl.download(urls, tmp_path / "f.tar", MD5, timeout=5)
    message = str(error.value)
    assert all(u in message for u in urls) and "md5" in message and "SEGLAB_DATA" in message
    assert not (tmp_path / "f.tar").exists()


def test_truncated_download_is_detected(server, tmp_path):
    base, _ = server
    with pytest.raises(dl.DownloadError, match="connection closed after 51200 of 102400 bytes|IncompleteRead"):
        dl.download([f"{base}/truncated"], tmp_path / "f.tar", MD5, timeout=5)
    assert not (tmp_path / "f.tar").exists()


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    base, seen = server
    (tmp_path / "f.tar.part").write_bytes(PAYLOAD[:1000])
    dest = dl.download([f"{base}/good"], tmp_path / "f.tar", MD5, timeout=5)
    assert dest.read_bytes() == PAYLOAD and seen == [("/good", "bytes=1000-")]


def test_a_verified_file_is_not_downloaded_again(tmp_path):
    (tmp_path / "f.tar").write_bytes(PAYLOAD)
    assert dl.download(["http://127.0.0.1:9/never"], tmp_path / "f.tar", MD5) == tmp_path / "f.tar"


def voc_tar(tmp_path, extra=()):
    devkit = write_voc(tmp_path / "src", train=2, val=1)
    (devkit / "VOC2012" / "JPEGImages" / "2008_000001.jpg").write_bytes(b"not a segmentation image")
    path = tmp_path / "voc.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(devkit, arcname="VOCdevkit")
        for name, data in extra:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extraction_keeps_only_what_segmentation_needs(tmp_path):
    devkit = dl.safe_extract(voc_tar(tmp_path), tmp_path / "out" / "VOCdevkit")
    jpegs = sorted(p.name for p in (devkit / "VOC2012" / "JPEGImages").iterdir())
    assert jpegs == ["2007_train000.jpg", "2007_train001.jpg", "2007_val000.jpg"]
    assert (devkit / "VOC2012/ImageSets/Segmentation/train.txt").is_file()
    assert not (tmp_path / "out" / "VOCdevkit.extracting").exists()


@pytest.mark.parametrize("evil", ["VOCdevkit/VOC2012/SegmentationClass/../../../../evil.png",
                                  "/tmp/VOCdevkit/VOC2012/SegmentationClass/abs.png"])
def test_path_traversal_members_are_refused(tmp_path, evil):
    with pytest.raises(tarfile.FilterError):
        dl.safe_extract(voc_tar(tmp_path, extra=[(evil, b"x")]), tmp_path / "out" / "VOCdevkit")
    assert not list(tmp_path.rglob("evil.png")) and not list(tmp_path.rglob("abs.png"))  # nothing was written
    assert not (tmp_path / "out" / "VOCdevkit").exists()


def test_archive_without_segmentation_data_is_refused_clearly(tmp_path):
    path = tmp_path / "other.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("VOCdevkit/VOC2012/Annotations/2007_000027.xml")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(dl.DownloadError, match="no segmentation masks or split lists.*Delete it and download again"):
        dl.safe_extract(path, tmp_path / "out" / "VOCdevkit")


def test_fetch_voc_end_to_end_from_a_mirror(tmp_path):
    tar = voc_tar(tmp_path)
    md5 = hashlib.md5(tar.read_bytes()).hexdigest()
    devkit = dl.fetch_voc(tmp_path / "cache", urls=[tar.as_uri()], md5=md5)
    assert devkit == tmp_path / "cache" / "VOCdevkit" and (devkit / "VOC2012" / "SegmentationClass").is_dir()
    assert not (tmp_path / "cache" / dl.VOC_TAR).exists()  # the 2 GB archive is removed after extraction
