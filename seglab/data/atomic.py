"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target, so that a
failed or interrupted write (a full disk, a killed process) leaves the old file as it was and no partial file."""

import os
import secrets
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path):
    """``with replacing(path) as file:`` write to ``file`` (binary); on leaving the block it is flushed to disk and
    renamed over ``path``. On any error ``path`` is left as it was and the temporary file is removed."""
    path = Path(path)
    temporary = str(path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))  # unique per process
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to a plain write
    try:
        with os.fdopen(fd, "wb") as file:
            if path.is_file():  # a replaced file keeps its permissions
                os.chmod(file.fileno(), path.stat().st_mode & 0o7777)
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_bytes(path, data):
    """Write ``data`` to ``path`` atomically; the temporary file is removed whatever happens."""
    with replacing(path) as file:
        file.write(data)
    return path


def write_text(path, text, encoding="utf-8"):
    """Write ``text`` to ``path`` atomically (see ``write_bytes``)."""
    return write_bytes(path, text.encode(encoding))


def remove_orphans(path):
    """Remove the temporary files of ``path`` left by processes that were killed while writing it (a live process's
    temporary file, named with its pid, is left alone)."""
    path = Path(path)
    prefix = f".{path.name}."
    for orphan in path.parent.glob(f"{prefix}*.tmp"):
        pid = orphan.name[len(prefix):].split(".")[0]
        if not (pid.isdigit() and _alive(int(pid))):
            orphan.unlink(missing_ok=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        pass
    return True
