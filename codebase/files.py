"""Writing files so that a crash or a full disk never leaves half of one."""
import errno
import io
import json
import os
import tempfile
from pathlib import Path


class SaveError(OSError):
    """A file could not be written; the message names it and says what to do."""


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
    """Delete temporary files that an earlier, killed process left in `folder`."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


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


METRICS_COLUMNS = ("iteration", "nelbo", "kl", "rec")


def read_metrics(path):
    """The rows of a metrics.csv that parse, and the line numbers of those that do not.

    The file may have been edited by hand (a spreadsheet's byte-order mark, a comment,
    a renamed header, a row cut off mid-line): such lines are skipped, never fatal.
    A row counts when it holds an integer iteration and three numbers.

    Args:
        path: str or Path: the file; it must exist

    Returns:
        rows: list of dict: {"iteration": int, "nelbo": float, "kl": float, "rec": float}, in file order
        dropped: list of int: 1-based numbers of the non-blank lines skipped, the header excluded
    """
    rows, dropped = [], []
    text = Path(path).read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff")
    for number, line in enumerate(text.splitlines(), start=1):
        fields = [f.strip() for f in line.split(",")]
        if not line.strip() or (number == 1 and fields[0].lower() == "iteration"):
            continue
        try:
            if len(fields) != len(METRICS_COLUMNS) or not fields[0].isdigit():
                raise ValueError
            values = [float(f) for f in fields[1:]]
        except ValueError:
            dropped.append(number)
            continue
        rows.append(dict(zip(METRICS_COLUMNS, [int(fields[0]), *values])))
    return rows, dropped
