"""Where PASCAL VOC 2012 is (``find_voc``: a given path, ``SEGLAB_DATA``, or the cache), and downloading it (trainval,
about 2 GB) safely when it is nowhere: mirrors, resume, checksum, atomic rename, safe extract.

Run ``python -m seglab.data.download [DEST]`` to fetch it ahead of time (default: the seglab cache directory).
"""

import contextlib
import fcntl
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

VOC_TAR = "VOCtrainval_11-May-2012.tar"
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
VOC_MIRRORS = (
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "http://d2l-data.s3-accelerate.amazonaws.com/VOCtrainval_11-May-2012.tar",
    "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
)
SEGMENTATION_PARTS = ("ImageSets/Segmentation/", "SegmentationClass/", "JPEGImages/")


class DownloadError(RuntimeError):
    pass


class DatasetNotFound(FileNotFoundError):
    pass


def cache_dir():
    """``$SEGLAB_CACHE`` (``~`` expanded, as for SEGLAB_DATA), or ``~/.cache/seglab`` when it is unset or empty."""
    given = os.environ.get("SEGLAB_CACHE", "").strip()
    return Path(given).expanduser() if given else Path.home() / ".cache" / "seglab"


def _devkit_in(path):
    """The folder holding ``VOC2012`` for a path that names VOCdevkit, VOC2012 itself, or their parent."""
    path = Path(path).expanduser()
    for candidate in (path, path / "VOCdevkit"):
        if (candidate / "VOC2012").is_dir():
            return candidate
    if path.name == "VOC2012" and path.is_dir():
        return path.parent
    return None


def find_voc(root=None, download=True):
    """Return the ``VOCdevkit`` folder, downloading VOC 2012 into the cache only when no copy is given or found."""
    for source, given in (("the root argument", root), ("SEGLAB_DATA", os.environ.get("SEGLAB_DATA"))):
        if given:
            if not Path(given).expanduser().exists():
                raise DatasetNotFound(f"{source} points to {given}, which does not exist. Point it at the folder "
                                      "that holds VOCdevkit/VOC2012 (or at VOCdevkit itself).")
            found = _devkit_in(given)
            if found is None:
                raise DatasetNotFound(f"{source} points to {given}, but there is no VOC2012 folder in it (looked "
                                      f"for {Path(given) / 'VOC2012'} and {Path(given) / 'VOCdevkit' / 'VOC2012'}).")
            return found
    cached = _devkit_in(cache_dir())
    if cached is not None:
        return cached
    if not download:
        raise DatasetNotFound(not_found_message())
    return fetch_voc(cache_dir())


def not_found_message(reason=""):
    return (f"PASCAL VOC 2012 was not found{': ' + reason if reason else ''}.\n"
            f"  Looked at: the root argument, SEGLAB_DATA={os.environ.get('SEGLAB_DATA')!r}, and {cache_dir()}.\n"
            "  To download it (about 2 GB) run:  python -m seglab.data.download\n"
            "  To use a local copy, set SEGLAB_DATA to the folder that holds VOCdevkit/VOC2012, "
            "e.g. export SEGLAB_DATA=/data/VOCdevkit")


class _PartTooLong(DownloadError):
    """The server answered HTTP 416 to a Range request: the ``.part`` file already holds all its bytes, or more."""


@contextlib.contextmanager
def locked(path):
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if missing, never deleted: deleting a lock file lets
    two processes lock two different files). A second process waits here until the first is done."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"Another process is downloading or extracting here (it holds {path}); waiting for it.", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def md5sum(path, chunk=1 << 20):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(urls, dest, md5, timeout=30):
    """Fetch ``dest`` from the first mirror that delivers a file with the right md5.

    Bytes go to ``dest.part`` (resumed with an HTTP Range request when a part file exists) and only a verified
    file is renamed to ``dest``, so an interrupted or corrupt download never looks complete. A lock next to
    ``dest`` keeps a second process from writing the same part file; it waits, then finds the finished file.
    A part file left by an earlier run is checked first: complete and correct, it is used; full-size (the server
    answers HTTP 416 to the Range request) but wrong, it is deleted and the file downloaded from the start."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked(dest.with_name(f".{dest.name}.lock")):
        if dest.is_file() and md5sum(dest) == md5:
            return dest
        part, tried = dest.with_name(dest.name + ".part"), []
        if part.is_file() and part.stat().st_size:
            if md5sum(part) == md5:  # e.g. a run killed during its MD5 check: the bytes are all there
                print(f"{part} is complete and its MD5 matches; using it (nothing to download).", flush=True)
                part.replace(dest)
                return dest
            print(f"Resuming the partial download {part} ({part.stat().st_size} bytes).", flush=True)
        return _download_locked(urls, dest, part, md5, timeout, tried)


def _download_locked(urls, dest, part, md5, timeout, tried):
    for url in urls:
        try:
            try:
                _fetch(url, part, timeout)
            except _PartTooLong as error:  # a full-size or oversized part that never verified: start over
                size = part.stat().st_size
                part.unlink()
                print(f"{url} says the partial file already has all its bytes ({error}), but its MD5 does not "
                      f"match: deleted {part.name} ({size} bytes) and downloading again from the start.", flush=True)
                tried.append(f"{url}: {part.name} was full-size ({size} bytes) but corrupt; deleted, fetched again")
                _fetch(url, part, timeout)
        except Exception as error:  # unreachable mirror, HTTP error, broken connection
            tried.append(f"{url}: {error}")
            continue
        got = md5sum(part)
        if got == md5:
            part.replace(dest)  # atomic on one filesystem
            return dest
        part.unlink()
        tried.append(f"{url}: md5 {got} != expected {md5} (truncated or corrupt; deleted)")
    raise DownloadError(f"Could not download {dest.name}. Tried:\n  " + "\n  ".join(tried)
                        + "\nIf you have a copy, set SEGLAB_DATA to the folder that holds VOCdevkit/VOC2012.")


def _fetch(url, part, timeout):
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        opened = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            total = (error.headers.get("Content-Range") or "").rpartition("/")[2]
            raise _PartTooLong(f"HTTP 416 for bytes {have}- of a {total or 'unknown'}-byte file") from None
        raise
    with opened as response:
        resumed = have > 0 and getattr(response, "status", None) == 206  # file:// mirrors never resume
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = int(length) + have if length is not None else None
        with open(part, "ab" if resumed else "wb") as out, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=Path(url).name) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            raise DownloadError(f"connection closed after {part.stat().st_size} of {total} bytes")


def segmentation_members(tar):
    """The members semantic segmentation needs: the split lists, the class masks and their JPEGs only."""
    members = {m.name: m for m in tar.getmembers()}
    prefix = next((n[: n.index("VOC2012/") + len("VOC2012/")] for n in members if "VOC2012/" in n), None)
    if prefix is None:
        raise DownloadError("The archive holds no VOC2012 folder.")
    masks = [m for n, m in members.items() if n.startswith(prefix + "SegmentationClass/") and n.endswith(".png")]
    ids = {Path(m.name).stem for m in masks}
    lists = [m for n, m in members.items() if n.startswith(prefix + "ImageSets/Segmentation/") and m.isfile()]
    images = [members[f"{prefix}JPEGImages/{i}.jpg"] for i in sorted(ids) if f"{prefix}JPEGImages/{i}.jpg" in members]
    return lists + masks + images


def safe_extract(tar_path, dest):
    """Extract the segmentation members into ``dest`` with tarfile's ``data`` filter, which refuses absolute
    paths, ``..`` and links that leave ``dest``. Extraction goes to a temporary folder of this process's own
    (``dest.extracting-*``), and the finished devkit is moved into place with one atomic rename."""
    if not hasattr(tarfile, "data_filter"):  # added in Python 3.10.12, 3.11.4 and 3.12
        raise DownloadError(f"This Python ({sys.version.split()[0]}) lacks tarfile's safe 'data' extraction filter; "
                            "use Python 3.10.12+, 3.11.4+ or 3.12+ to extract VOC safely.")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.extracting-", dir=dest.parent))
    try:
        return _extract_into(tar_path, dest, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_into(tar_path, dest, tmp):
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():  # refuse the whole archive if any name is absolute or climbs out
            if member.name.startswith(("/", "\\")):
                raise tarfile.AbsolutePathError(member)
            tarfile.data_filter(member, str(tmp))
        members = segmentation_members(tar)
        for member in tqdm(members, desc="extracting", unit="file"):
            tar.extract(member, tmp, filter="data")
    devkit = next((p.parent for p in tmp.rglob("VOC2012") if p.is_dir()), None)
    if devkit is None:
        raise DownloadError(f"{tar_path} holds a VOC2012 folder but no segmentation masks or split lists; it is not "
                            "the VOC 2012 trainval archive. Delete it and download again.")
    try:
        os.rename(devkit, dest)  # atomic: dest is either absent or the complete devkit, never half of one
    except OSError as error:
        if (dest / "VOC2012").is_dir():  # another process finished first: keep its copy
            return dest
        raise DownloadError(f"Cannot move the extracted devkit into {dest} ({error.strerror or error}): {dest} "
                            "already exists but holds no VOC2012 folder. Delete or move it away, then run again.") \
            from None
    return dest


def fetch_voc(cache, urls=None, md5=None):
    """Download and extract VOC 2012's segmentation part into ``cache/VOCdevkit``; returns that folder.

    A lock (``cache/.VOCdevkit.lock``) is held across download, verification and extraction: a second process
    waits for it, then finds the devkit the first one finished and does nothing more."""
    cache, urls, md5 = Path(cache).expanduser(), urls or VOC_MIRRORS, md5 or VOC_MD5
    tar_path, devkit = cache / VOC_TAR, cache / "VOCdevkit"
    with locked(cache / ".VOCdevkit.lock"):
        if (devkit / "VOC2012").is_dir():  # finished meanwhile by another process (or by an earlier run)
            print(f"PASCAL VOC 2012 is already in {devkit}; nothing to download.", flush=True)
            return devkit
        for stale in cache.glob("VOCdevkit.extracting*"):  # left by a killed run; nobody else extracts now
            shutil.rmtree(stale, ignore_errors=True)
        print(f"PASCAL VOC 2012 not found locally; downloading it (about 2 GB) into {cache}.", flush=True)
        try:
            download(urls, tar_path, md5)
        except DownloadError as error:
            raise DatasetNotFound(not_found_message("no local copy, and the download failed") + "\n" + str(error)) \
                from None
        print(f"Extracting the segmentation part of {tar_path} into {devkit}.", flush=True)
        safe_extract(tar_path, devkit)
        tar_path.unlink()
    return devkit


def main(argv=None):
    """``python -m seglab.data.download [DEST]``: find VOC 2012 where seglab looks for it (``DEST``, else SEGLAB_DATA,
    else the cache) and say where; download it (into ``DEST`` or the cache) only when it is nowhere."""
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        dest = Path(argv[0]).expanduser()
        found, source = _devkit_in(dest), f"in {dest}"
    else:
        dest, source = cache_dir(), "through SEGLAB_DATA" if os.environ.get("SEGLAB_DATA") else "in the cache"
        try:
            found = find_voc(download=False)
        except DatasetNotFound as error:
            if os.environ.get("SEGLAB_DATA"):  # pointing at a wrong folder: downloading elsewhere would not help
                raise SystemExit(f"{error}\nFix or unset SEGLAB_DATA; nothing was downloaded.") from None
            found = None
    if found is not None:
        print(f"PASCAL VOC 2012 found {source}: {found}. Nothing to download.")
        return found
    devkit = fetch_voc(dest)
    print(devkit)
    return devkit


if __name__ == "__main__":
    main()
