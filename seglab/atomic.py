"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target, so that a
failed or interrupted write (a full disk, a killed process) leaves the old file as it was and no partial file."""

import os
import secrets
from pathlib import Path


def write_bytes(path, data):
    """Write ``data`` to ``path`` atomically; the temporary file is removed whatever happens."""
    path = Path(path)
    temporary = str(path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))  # unique per process
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to a plain write
    try:
        with os.fdopen(fd, "wb") as file:
            if path.is_file():  # a replaced file keeps its permissions
                os.chmod(file.fileno(), path.stat().st_mode & 0o7777)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def write_text(path, text, encoding="utf-8"):
    """Write ``text`` to ``path`` atomically (see ``write_bytes``)."""
    return write_bytes(path, text.encode(encoding))
