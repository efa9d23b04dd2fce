"""Collecting a submission: the student's two files, found in a folder or a zip however it is laid out,
and the submissions in a folder of them (batch).

Only codebase/utils.py and codebase/models/gmvae.py are taken: loose, in a codebase/ tree, or anywhere
in a whole repository, which may be a zip inside the upload. Nothing is followed (a symbolic link, a
path out of the zip), nothing is opened past its size limit (LIMITS), and a damaged zip or file, at any
depth of zips inside zips, is named as the submission's: the rest is graded.
"""
import collections
import hashlib
import io
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from course.settings import LIMITS
from course.untrusted import shown

ROOT = Path(__file__).resolve().parents[1]  # the repository, or /autograder/source in the grading image
# Written into the zip only: the starter's paths, so the image need not regenerate the starter.
MANIFEST = ROOT / "course" / "gradescope" / "starter_files.txt"
# The files a student writes, and the short names they may upload them under.
STUDENT_FILES = {"codebase/utils.py": "utils.py", "codebase/models/gmvae.py": "gmvae.py"}
IGNORED_PARTS = {"__MACOSX", ".git", "__pycache__", ".ipynb_checkpoints"}
SMALLEST_MEMBER = 46  # bytes of a zip's directory that each member takes at the least (a member with no name)


class SubmissionError(ValueError):
    """The submission cannot be read at all (not a folder or zip, a broken zip); one line."""


@dataclass
class Found:
    files: dict = field(default_factory=dict)  # {starter path: bytes}
    where: dict = field(default_factory=dict)  # {starter path: path in the submission, shown escaped}
    missing: list = field(default_factory=list)  # starter paths not found
    notes: list = field(default_factory=list)  # lines for the student
    ignored: int = 0  # other files in the submission


def collect(submission):
    """The student's two files from a submission: loose, in a codebase/ tree, or in a whole repo,
    which may itself be a zip inside the submission.

    For each file, a path ending in its full starter path (codebase/models/gmvae.py) is
    preferred to a bare name (gmvae.py), and a shallower one to a deeper one.

    Returns:
        found: Found

    Raises:
        SubmissionError: the submission is neither a folder nor a readable zip
    """
    found = Found()
    budget = _Budget()
    entries = _submission_entries(submission, budget, found.notes)
    entries = _with_inner_zips(entries, found.notes, budget, _digests_of(submission))
    for target, short in STUDENT_FILES.items():
        full = [n for n in entries if n == target or n.endswith("/" + target)]
        bare = [n for n in entries if n == short or n.endswith("/" + short)]
        candidates = sorted(full or bare, key=lambda n: (n.count("/"), n))
        if not candidates:
            found.missing.append(target)
            continue
        if len(candidates) > 1:
            found.notes.append(f"{len(candidates)} files could be {target}; graded {shown(candidates[0])}.")
        _take(found, target, candidates[0], *entries[candidates[0]])
    found.ignored = len(entries) - len(found.where)
    return found


def _take(found, target, name, read, size):
    """Put the entry `name` into `found` as `target`, or say in its notes why it is not graded."""
    try:
        if size > LIMITS.max_source_bytes:
            raise SubmissionError(f"{shown(name)} is {size:,} bytes, over the {LIMITS.max_source_bytes:,} accepted")
        data = read()
        data.decode("utf-8")
    except (SubmissionError, UnicodeDecodeError) as e:
        reason = e if isinstance(e, SubmissionError) else f"{shown(name)} is not UTF-8 text"
        found.notes.append(f"{reason}: not graded.")
        found.missing.append(target)
        return
    found.files[target], found.where[target] = data, shown(name)


def _submission_entries(submission, budget, notes):
    """{relative posix path: (a callable returning the bytes, the size)} of a folder or zip's files.
    Calling one raises SubmissionError where the file cannot be read. A folder is looked into shallowest
    first, as far as the budget's files go (the student's two are near the top)."""
    path = Path(submission)
    if path.is_dir():
        entries, todo = {}, collections.deque([path])
        while todo:  # without recursion: a submission's folders may go thousands deep
            try:
                children = sorted(todo.popleft().iterdir())
            except OSError:  # a folder that cannot be listed (as another user than root): its files are not taken
                continue
            if not budget.room(len(children)):
                notes.append(f"The submission holds more than {LIMITS.max_entries:,} files and folders: only "
                             "the shallowest were looked into.")
                break
            for p in children:
                rel = p.relative_to(path)
                if p.is_symlink() or IGNORED_PARTS & set(rel.parts):
                    continue  # a link could point at the grader's own files
                if p.is_dir():
                    todo.append(p)
                elif p.is_file():
                    entries[rel.as_posix()] = (_file_reader(p, rel.as_posix()), p.stat().st_size)
        return entries
    if path.is_file() and zipfile.is_zipfile(path):
        return _zip_entries(path, path.name, budget)
    if path.exists():
        raise SubmissionError(f"{shown(path.name)} is neither a folder nor a zip")
    raise SubmissionError(f"{shown(path)} does not exist")


def _file_reader(path, name):
    def read():
        try:
            return path.read_bytes()
        except OSError as e:
            raise SubmissionError(f"{shown(name)} cannot be read ({shown(e.strerror or e)})") from None
    return read


class _Budget:
    """The bytes that the submission's zips, at every depth together, may still unpack to: a zip of zips
    of zips could otherwise unpack to any size from a few kilobytes."""

    def __init__(self):
        self.left = LIMITS.max_unzipped_bytes
        self.entries = LIMITS.max_entries  # files and folders, in folders and zips together

    def room(self, count):
        """Whether `count` more files and folders fit in the budget; they are spent if they do."""
        if count > self.entries:
            return False
        self.entries -= count
        return True

    def spend(self, name, size):
        """Raises SubmissionError if the zip `name`, which unpacks to `size` bytes, is past the budget."""
        total = LIMITS.max_unzipped_bytes
        if size > total:
            raise SubmissionError(f"{shown(name)} unpacks to more than {total >> 20} MB")
        if size > self.left:
            raise SubmissionError(f"{shown(name)} unpacks to more than the submission's zips have left of the "
                                  f"{total >> 20} MB they may unpack to")
        self.left -= size


def _zip_entries(file, name, budget):
    """_submission_entries of a zip: `file` is its path or a file object, `name` what messages call it.

    Whatever zipfile makes of the bytes is the upload's doing, not the grader's: a damaged directory
    raises SubmissionError here, and a damaged member (a bad CRC, a corrupt or cut-off stream, a
    compression method zipfile lacks, encryption) when the entry is read, naming the member.
    """
    try:
        file = file if hasattr(file, "read") else open(file, "rb")
        # Reading a zip's directory takes about 35 us and 1 kB a member: 1,000,000 empty members unpacked from
        # 6 MB of zips inside a zip took the grader 35 s and 1.1 GB. The end record says how large the directory
        # is before it is read, and so how many members it can hold at most.
        end = zipfile._EndRecData(file)
        if end is not None and not budget.room(end[zipfile._ECD_SIZE] // SMALLEST_MEMBER):
            raise SubmissionError(f"{shown(name)} could hold more files than the {LIMITS.max_entries:,} that a "
                                  "submission's folders and zips may hold together")
        archive = zipfile.ZipFile(file)
        infos = archive.infolist()
        unzipped = sum(i.file_size for i in infos)
    except SubmissionError:
        raise
    except Exception as e:
        raise SubmissionError(f"{shown(name)} is not a readable zip ({shown(e)})") from None
    budget.spend(name, unzipped)

    def reader(info):
        def read():
            try:
                return archive.read(info)
            except Exception as e:
                raise SubmissionError(f"{shown(name)} is damaged at {shown(info.filename)} ({shown(e)})") from None
        return read

    entries = {}
    for info in infos:
        parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")]
        link = stat.S_ISLNK(info.external_attr >> 16)
        if info.is_dir() or link or ".." in parts or IGNORED_PARTS & set(parts):
            continue
        entries["/".join(parts)] = (reader(info), info.file_size)
    return entries


def _digests_of(submission):
    """{the sha256 of the submission}, if it is a file (a zip), else an empty set."""
    path = Path(submission)
    if not path.is_file():
        return set()
    with open(path, "rb") as f:
        return {hashlib.file_digest(f, "sha256").digest()}


def _with_inner_zips(entries, notes, budget, seen):
    """entries, and the files of each zip among them as "<zip's path>/<path inside>", at any depth:
    students upload a folder that holds their zipped repository, or a zip of a zip. A zip that cannot be
    opened is named in `notes` and left as a file; one whose bytes were opened before (their sha256s are in
    `seen`) is not opened again: a zip quine unpacks to itself, and each level's names are longer."""
    found, todo = dict(entries), collections.deque(entries.items())
    while todo:  # breadth first, without recursion
        name, (read, size) = todo.popleft()
        if not name.lower().endswith(".zip"):
            continue
        if size > LIMITS.max_inner_zip_bytes:
            notes.append(f"{shown(name)} is {size / (1 << 20):,.0f} MB, over the {LIMITS.max_inner_zip_bytes >> 20} "
                         "MB of a zip that is looked into: not opened.")
            continue
        try:
            data = read()
            digest = hashlib.sha256(data).digest()
            if digest in seen:
                raise SubmissionError(f"{shown(name)} is a copy of a zip already looked into")
            seen.add(digest)
            inner = _zip_entries(io.BytesIO(data), name, budget)
        except SubmissionError as e:
            notes.append(f"{e}: not opened.")
            continue
        nested = {f"{name}/{inner_name}": entry for inner_name, entry in inner.items()}
        found |= nested
        todo.extend(nested.items())
    return found


def syntax_errors(found):
    """One line per student file that does not compile (compiling runs none of its code)."""
    lines = []
    for target, data in found.files.items():
        try:
            compile(data, target, "exec", dont_inherit=True)
        except SyntaxError as e:
            lines.append(f"{found.where[target]} does not compile: {shown(e.msg)} (line {e.lineno}).")
        except (ValueError, RecursionError, MemoryError) as e:
            lines.append(f"{found.where[target]} does not compile: {type(e).__name__}: {shown(e)}.")
    return lines


def starter_files():
    """{path: bytes} of the student starter: from the image's manifest, or made by course.handout."""
    if MANIFEST.is_file():
        return {name: (ROOT / name).read_bytes() for name in MANIFEST.read_text().split()}
    from course import handout
    # The work folder runs the probe and the run script, which need no stored expected values.
    return handout.starter_files(set(handout.VARIANTS["default"]), stored=False)


def submissions_in(folder):
    """{name: path} of the submissions in a folder: each subfolder and each zip."""
    found = {}
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or path.name in IGNORED_PARTS:
            continue
        if path.is_dir():
            found[path.name] = path
        elif path.is_file() and path.suffix.lower() == ".zip":
            # alice.zip beside a folder alice/ is another submission: it keeps its suffix in its name.
            found[path.name if (path.parent / path.stem).is_dir() else path.stem] = path
    return found
