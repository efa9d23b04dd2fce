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
    """Write bytes under a temporary name in the same folder, then rename into place.

    A crash leaves either the old file or the new one under `path`, never half of
    one, and two processes writing the same file cannot interleave their bytes.
    A killed process may leave its temporary file, named .<name>.<random>.tmp, behind.

    Args:
        path: str or Path: the final name
        data: bytes: the whole content
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise save_error(path, e) from None
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
            raise save_error(path, e) from None
        raise


def save_error(path, e):
    if e.errno == errno.ENOSPC:
        return SaveError(e.errno, f"no space left on the device while writing {path}; "
                                  "free some space and run again (earlier files are intact)")
    return SaveError(e.errno, f"could not write {path}: {e.strerror or e}")


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


def write_json(path, obj):
    """Write `obj` as indented JSON, atomically."""
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_png_grid(path, images, rows, cols):
    """Save images as one grayscale PNG grid, row by row without padding (white digits on black), atomically.

    matplotlib writes it rather than torchvision's save_image: the grader's image, which writes the same
    grids, has no torchvision.

    Args:
        path: str or Path: the PNG file
        images: tensor: (rows * cols, 784): pixel values in [0, 1]
        rows, cols: int: grid shape; the PNG is rows * 28 by cols * 28 pixels
    """
    import matplotlib.image

    grid = images.detach().cpu().float().reshape(rows, cols, 28, 28).permute(0, 2, 1, 3)
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, grid.reshape(rows * 28, cols * 28).numpy(), cmap="gray", vmin=0.0, vmax=1.0,
                            format="png")
    write_atomic(path, buffer.getvalue())
