"""Download PASCAL VOC 2012 (trainval, about 2 GB) safely: mirrors, resume, checksum, atomic rename, safe extract.

Run ``python -m seglab.download [DEST]`` to fetch it ahead of time (default: the seglab cache directory).
"""

import hashlib
import shutil
import sys
import tarfile
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


def md5sum(path, chunk=1 << 20):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(urls, dest, md5, timeout=30):
    """Fetch ``dest`` from the first mirror that delivers a file with the right md5.

    Bytes go to ``dest.part`` (resumed with an HTTP Range request when a part file exists) and only a verified
    file is renamed to ``dest``, so an interrupted or corrupt download never looks complete."""
    dest = Path(dest)
    if dest.is_file() and md5sum(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, tried = dest.with_name(dest.name + ".part"), []
    for url in urls:
        try:
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
    with urllib.request.urlopen(request, timeout=timeout) as response:
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
    paths, ``..`` and links that leave ``dest``. Extraction goes to a temporary folder renamed at the end."""
    if not hasattr(tarfile, "data_filter"):  # added in Python 3.10.12, 3.11.4 and 3.12
        raise DownloadError(f"This Python ({sys.version.split()[0]}) lacks tarfile's safe 'data' extraction filter; "
                            "use Python 3.10.12+, 3.11.4+ or 3.12+ to extract VOC safely.")
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
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
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(f"{tar_path} holds a VOC2012 folder but no segmentation masks or split lists; it is not "
                            "the VOC 2012 trainval archive. Delete it and download again.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    devkit.replace(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch_voc(cache, urls=None, md5=VOC_MD5):
    """Download and extract VOC 2012's segmentation part into ``cache/VOCdevkit``; returns that folder."""
    cache, urls = Path(cache), urls or VOC_MIRRORS
    tar_path = cache / VOC_TAR
    print(f"PASCAL VOC 2012 not found locally; downloading it (about 2 GB) into {cache}.")
    try:
        download(urls, tar_path, md5)
    except DownloadError as error:
        from seglab.voc import DatasetNotFound, not_found_message
        raise DatasetNotFound(not_found_message("no local copy, and the download failed") + "\n" + str(error)) from None
    devkit = safe_extract(tar_path, cache / "VOCdevkit")
    tar_path.unlink()
    return devkit


if __name__ == "__main__":
    from seglab.voc import cache_dir
    print(fetch_voc(Path(sys.argv[1]) if len(sys.argv) > 1 else cache_dir()))
