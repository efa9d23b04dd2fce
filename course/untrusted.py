"""What comes from the submission, handled without trusting it: its names and printed output shown
escaped, the files its code wrote read without following a symbolic link anywhere on their path,
and its trees removed without recursion however deep.
"""
import errno
import os
import re
import stat
import subprocess
from pathlib import Path


def remove(path):
    """Delete `path` and all below it, never following a link and without recursion however deep it goes
    (shutil.rmtree recurses, and a student's tree can be thousands of folders deep). True if it is gone."""
    if not os.path.lexists(path):
        return True
    subprocess.run(["rm", "-rf", "--", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return not os.path.lexists(path)


# ---------------------------------------------------------------------------------------------
# Text from the submission
# ---------------------------------------------------------------------------------------------

# Also the bidirectional controls, which would show a line's text in another order than it was printed.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(text):
    """Printed output, shown as plain text: control characters (escapes, NUL, carriage returns) removed,
    and each line marked as the submission's with "| ", so that none reads as one of the grader's."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n"))
    return "\n".join(f"| {line}" for line in text.splitlines())


def shown(name, limit=300):
    """A name from the submission (a file or zip member) on one line, non-printable characters escaped,
    at most `limit` characters of it."""
    text = str(name)[:limit]  # before escaping: a 30 MB message is never copied whole
    return "".join(c if c.isprintable() and c not in "\n\r" else repr(c)[1:-1] for c in text)[:limit]


# ---------------------------------------------------------------------------------------------
# Reading what the student's code wrote, never following a link
# ---------------------------------------------------------------------------------------------

def _open_beneath(root, relative, flags):
    """An fd of root/relative opened with `flags`, each part of `relative` opened without following a link."""
    parts = [p for p in Path(relative).parts if p not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EPERM, f"{relative}: .. is not allowed")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=fd) if parts else os.dup(fd)
    finally:
        os.close(fd)


def read_beneath(root, relative, limit):
    """The bytes of the regular file root/relative, at most `limit` of them.

    Returns:
        data: bytes, or None if it is missing, a link (anywhere on the path), not a regular file,
            or larger than `limit`; and why not, in a few words
    """
    try:
        fd = _open_beneath(root, relative, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return None, "a symbolic link" if e.errno in (errno.ELOOP, errno.ENOTDIR) else "missing"
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file"
        if info.st_size > limit:
            return None, f"larger than {limit >> 20} MB"
        return f.read(limit + 1)[:limit], ""


def list_beneath(root, relative):
    """The names in the folder root/relative (opened as read_beneath does), or [] if it is not one."""
    try:
        fd = _open_beneath(root, relative, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)
