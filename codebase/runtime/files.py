"""Writing files so that a crash or a full disk never leaves half of one."""
import errno
import io
import json
import os
import socket
import tempfile
import time
from pathlib import Path

from codebase.runtime.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not locked
    fcntl = None


class SaveError(UserError, OSError):
    """A file could not be written; the message names it and says what to do."""

    def __str__(self):
        return self.strerror or super().__str__()


def write_atomic(path, data):
    """Write bytes under a temporary name in the same folder, then rename into place.

    A crash leaves either the old file or the new one under `path`, never half of
    one, and two processes writing the same file cannot interleave their bytes.
    Temporary files are named .<name>.<random>.tmp; see remove_stale_temporaries.

    Args:
        path: str or Path: the final name
        data: bytes: the whole content
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _save_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _save_error(path, e) from None
        raise


def _save_error(path, e):
    if e.errno == errno.ENOSPC:
        return SaveError(e.errno, f"no space left on the device while writing {path}; "
                                  "free some space and run again (earlier files are intact)")
    return SaveError(e.errno, f"could not write {path}: {e.strerror or e}")


def remove_stale_temporaries(folder):
    """Delete temporary files that an earlier, killed process left in `folder`.

    Call it only while holding the folder's lock (see locked): a temporary file of
    a process that is still running is its save in progress.
    """
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only folder: the file is harmless where it is
            pass


def check_writable(folder):
    """Create `folder` if needed and write (then remove) a file in it; raise SaveError if that fails."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        Path(probe).unlink(missing_ok=True)
    except OSError as e:
        raise SaveError(e.errno, f"cannot write in {folder} ({e.strerror or e}); make it writable "
                                 "or run from another folder. Nothing was trained or written.") from None


class InUse(RuntimeError):
    """Another process holds the lock; the message says which one."""


def try_lock(fd):
    """Take an exclusive lock on the open file `fd` without waiting.

    flock locks belong to the open file, and the kernel drops them when the process
    dies, so a killed run leaves no stale lock behind.

    Returns:
        locked: bool: False if another open file (of any process) holds the lock
    """
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class locked:
    """`with locked(path):` holds an exclusive lock on the file `path`, or raises InUse.

    The holder writes its pid, host and start time into the file, so that a refused
    process can say who holds it. The file itself stays; only the lock goes.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.fd = None

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _save_error(self.path, e) from None
        if not try_lock(self.fd):
            holder = os.pread(self.fd, 500, 0).decode("utf-8", errors="replace").strip()
            os.close(self.fd)
            raise InUse(holder or "another process")
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
        except OSError:  # the lock holds all the same; only the note of who holds it is missing
            pass
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


class AppendOnly:
    """A file that grows by whole records: an append that fails leaves the file as it was.

    Each record goes out in one os.write; a failed or short write (a full disk) is
    cut back to the previous size, so no partial row is ever left behind.
    """

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self.size = os.fstat(self.fd).st_size
        except OSError as e:
            raise _save_error(self.path, e) from None

    def append(self, data):
        """Append bytes, all or none of them; raises SaveError naming the file."""
        try:
            written = os.write(self.fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            raise _save_error(self.path, e) from None
        self.size += written

    def close(self):
        os.close(self.fd)


def write_json(path, obj):
    """Write `obj` as indented JSON, atomically."""
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def tile(images, rows, cols, side=28):
    """Lay out images row by row in a rows x cols grid, with no padding.

    Args:
        images: tensor: (rows * cols, side * side): pixel values in [0, 1]
        rows, cols: int: grid shape
        side: int: image height and width

    Returns:
        grid: tensor: (rows * side, cols * side)
    """
    grid = images.reshape(rows, cols, side, side).permute(0, 2, 1, 3)
    return grid.reshape(rows * side, cols * side)


def write_png_grid(path, images, rows, cols):
    """Save images as one grayscale PNG grid (white digits on black), atomically.

    Args:
        path: str or Path: the PNG file
        images: tensor: (rows * cols, 784): pixel values in [0, 1]
        rows, cols: int: grid shape; the PNG is rows * 28 by cols * 28 pixels
    """
    import matplotlib.image

    buffer = io.BytesIO()
    grid = tile(images.detach().cpu().float(), rows, cols).numpy()
    matplotlib.image.imsave(buffer, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    write_atomic(path, buffer.getvalue())
