"""Damaged uploads are the submission's: each kind of damage a zip can have (a bad CRC, a corrupt deflate
stream, a member cut short, a compression method zipfile lacks, an encrypted member), at any depth of
zips inside zips, is named in one line with the member's escaped name, and the rest is graded.

The zips are made by zipfile and then damaged byte by byte, as a broken upload or a hostile student
would leave them; they go through the grader's own reading (autograder.read_submission).
"""
import io
import json
import os
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from course import autograder, collect

UTILS, GMVAE = b"def log_normal_mixture():\n    return 1\n" * 20, b"class GMVAE:\n    pass\n" * 20
LOCAL, CENTRAL = b"PK\x03\x04", b"PK\x01\x02"
# Offsets within a local header and a central directory entry, of the fields damaged here.
FIELDS = {"flags": (6, 8, "<H"), "method": (8, 10, "<H"), "crc": (14, 16, "<I"), "compressed": (18, 20, "<I"),
          "size": (22, 24, "<I")}


def zipped(files, compression=zipfile.ZIP_DEFLATED):
    """The bytes of a zip of {name: bytes}."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buffer.getvalue()


def member_data(data, name):
    """(start, end) of a member's stored bytes in a zip."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    return start, start + info.compress_size


def patched(data, name, **values):
    """The zip `data` with fields of the member `name` (FIELDS' names) set in its local header and its
    central directory entry alike, as zipfile checks them against each other."""
    data = bytearray(data)
    local = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo(name).header_offset
    central = data.index(CENTRAL)
    encoded = name.encode()
    while data[central + 46:central + 46 + len(encoded)] != encoded:
        central = data.index(CENTRAL, central + 4)
    for field, value in values.items():
        at_local, at_central, form = FIELDS[field]
        struct.pack_into(form, data, local + at_local, value)
        struct.pack_into(form, data, central + at_central, value)
    return bytes(data)


def bad_crc(data, name):
    start, _ = member_data(data, name)
    return data[:start] + bytes([data[start] ^ 0xFF]) + data[start + 1:]


def corrupt_deflate(data, name):
    start, end = member_data(data, name)
    return data[:start] + b"\xff" * (end - start) + data[end:]  # block type 3, which deflate reserves


def truncated(data, name):
    """The member's stream cut in half (the bytes after the cut are left as a gap, which zips may have)."""
    start, end = member_data(data, name)
    return patched(data, name, compressed=(end - start) // 2)


def cut_off(data, name):
    """The member said to run past the end of the file, as an upload cut short with its directory kept."""
    return patched(data, name, compressed=100_000, size=100_000)


def unsupported(data, name):
    return patched(data, name, method=9)  # deflate64, which zipfile cannot read


def encrypted(data, name):
    return patched(data, name, flags=1)


STORED, DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
DAMAGE = {"a bad CRC": (bad_crc, STORED), "a corrupt deflate stream": (corrupt_deflate, DEFLATED),
          "a truncated member": (truncated, DEFLATED), "a member past the end": (cut_off, STORED),
          "an unsupported compression method": (unsupported, DEFLATED), "an encrypted member": (encrypted, DEFLATED)}


def damaged_zip(kind, name="gmvae.py", files=None):
    """A zip of the two student files whose member `name` has the damage `kind`, and the rest intact."""
    damage, compression = DAMAGE[kind]
    files = files or {"utils.py": UTILS, "gmvae.py": GMVAE}
    # The damaged member goes last, so that a size said to run past it reaches the end of the file.
    ordered = {n: files[n] for n in sorted(files, key=lambda n: n == name)}
    return damage(zipped(ordered, compression), name)


def read(submission):
    """autograder.read_submission's Found and the lines the student is shown."""
    grading = SimpleNamespace(notes=[])
    return autograder.read_submission(submission, grading), grading.notes


def test_the_damage_is_real():
    """Each damaged zip fails zipfile's reading of that member, and of no other; the errors are of kinds
    that the grader once took for its own failure (zlib.error) or let through."""
    raised = set()
    for kind in DAMAGE:
        archive = zipfile.ZipFile(io.BytesIO(damaged_zip(kind)))
        assert archive.read("utils.py") == UTILS, kind
        with pytest.raises((zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)) as e:
            archive.read("gmvae.py")
        raised.add(e.type)
    assert {zlib.error, NotImplementedError, RuntimeError} <= raised


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_member_is_named_as_the_submissions_and_the_rest_graded(tmp_path, kind):
    submission = tmp_path / "submission.zip"
    submission.write_bytes(damaged_zip(kind))
    found, notes = read(submission)
    assert found.files == {"codebase/utils.py": UTILS} and found.missing == ["codebase/models/gmvae.py"], kind
    damaged = [n for n in notes if "damaged" in n]
    assert len(damaged) == 1 and damaged[0].startswith("submission.zip is damaged at gmvae.py ("), notes
    assert damaged[0].endswith("): not graded.") and "\n" not in damaged[0], damaged
    assert not any("autograder" in n for n in notes), notes


@pytest.mark.parametrize("kind", DAMAGE)
def test_damage_deep_in_zips_inside_zips_is_named_with_its_path(tmp_path, kind):
    """utils.py three zips deep is damaged; gmvae.py, two deep, is graded."""
    innermost = damaged_zip(kind, "utils.py", {"utils.py": UTILS})
    middle = zipped({"repo/deep.zip": innermost, "repo/codebase/models/gmvae.py": GMVAE})
    outer = tmp_path / "upload.zip"
    outer.write_bytes(zipped({"middle.zip": middle}))
    found, notes = read(outer)
    assert found.files == {"codebase/models/gmvae.py": GMVAE}, (kind, notes)
    assert found.where["codebase/models/gmvae.py"] == "middle.zip/repo/codebase/models/gmvae.py"
    damaged = [n for n in notes if "damaged" in n]
    assert len(damaged) == 1 and damaged[0].startswith("middle.zip/repo/deep.zip is damaged at utils.py ("), notes


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_inner_zip_is_named_and_left_unopened(tmp_path, kind):
    """The zip inside the upload is the damaged member: it is not opened, and the loose files are graded."""
    inner = zipped({"codebase/utils.py": UTILS})
    outer = damaged_zip(kind, "inner.zip", {"inner.zip": inner, "utils.py": UTILS, "gmvae.py": GMVAE})
    (tmp_path / "upload.zip").write_bytes(outer)
    found, notes = read(tmp_path / "upload.zip")
    assert set(found.files) == {"codebase/utils.py", "codebase/models/gmvae.py"}, (kind, notes)
    assert any(n.startswith("upload.zip is damaged at inner.zip (") and n.endswith("): not opened.")
               for n in notes), notes


def test_a_damaged_members_name_is_shown_escaped_on_one_line(tmp_path):
    name = "x\n\x1b[31mScore: 100 / 100.\n/gmvae.py"
    data = bad_crc(zipped({"utils.py": UTILS, name: GMVAE}, zipfile.ZIP_STORED), name)
    (tmp_path / "s.zip").write_bytes(data)
    _, notes = read(tmp_path / "s.zip")
    assert any(n.startswith(r"s.zip is damaged at x\n\x1b[31mScore: 100 / 100.\n/gmvae.py (") for n in notes), notes
    assert not any("\n" in n or "\x1b" in n for n in notes)


def test_a_zip_whose_directory_is_damaged_is_the_submissions(tmp_path):
    """The zip's central directory is said to start past the file's end: nothing in it can be read, and
    the student is told so, never that the autograder failed."""
    data = bytearray(zipped({"utils.py": UTILS, "gmvae.py": GMVAE}))
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<I", data, end + 16, len(data) + 1000)  # the directory said to start past the file's end
    (tmp_path / "s.zip").write_bytes(bytes(data))
    found, notes = read(tmp_path / "s.zip")
    assert found.files == {} and any(n.startswith("s.zip ") or "read: s.zip " in n for n in notes), notes
    assert not any("autograder" in n for n in notes), notes


def test_zips_nested_without_end_stop_at_the_unzipped_limit(tmp_path, monkeypatch):
    """A zip of a zip of a zip ... is opened at any depth, but all of them together unpack to at most
    max_unzipped_bytes: a zip bomb of nested zips stops there, named."""
    data = zipped({"utils.py": UTILS, "gmvae.py": GMVAE})
    for depth in range(12):
        data = zipped({f"level{depth}.zip": data, f"pad{depth}.txt": b"x" * 1000})
    (tmp_path / "deep.zip").write_bytes(data)
    found, _ = read(tmp_path / "deep.zip")
    assert set(found.files) == {"codebase/utils.py", "codebase/models/gmvae.py"}
    monkeypatch.setattr(collect, "LIMITS", collect.LIMITS.__class__(max_unzipped_bytes=len(data) * 3))
    found, notes = read(tmp_path / "deep.zip")
    assert found.files == {} and any("not opened" in n and "MB" in n for n in notes), notes


def test_a_folder_that_cannot_be_listed_is_left_out_and_the_rest_graded(tmp_path, monkeypatch):
    """As another user than root, a folder of mode 000 cannot be listed: its files are not taken."""
    folder = tmp_path / "s"
    for name, data in {"utils.py": UTILS, "locked/gmvae.py": GMVAE}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    listed = collect.Path.iterdir

    def iterdir(path):
        if path.name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return listed(path)

    monkeypatch.setattr(collect.Path, "iterdir", iterdir)
    found, notes = read(folder)
    assert found.files == {"codebase/utils.py": UTILS} and found.missing == ["codebase/models/gmvae.py"], notes


@pytest.mark.slow
def test_a_grading_of_a_damaged_upload_names_it_and_grades_the_rest(grading_source, grader_python, tmp_path):
    """The whole grader, as Gradescope runs it: the model answer's utils.py graded, its gmvae.py's corrupt
    deflate stream named, and no word of the autograder failing."""
    root = Path(__file__).resolve().parents[1]
    answer = {"utils.py": (root / "codebase/utils.py").read_bytes(), "gmvae.py": (root / "codebase/models/gmvae.py")
              .read_bytes()}
    upload = tmp_path / "submission.zip"
    upload.write_bytes(damaged_zip("a corrupt deflate stream", files=answer))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    out = tmp_path / "results.json"
    done = subprocess.run([grader_python, "-m", "course.autograder", "grade", str(upload), "--out", str(out), "--only",
                           "log_normal_mixture"], cwd=grading_source("damaged_source"), env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["score"] == 30, results["output"]
    assert "submission.zip is damaged at gmvae.py (Error -3 while decompressing data: invalid block type): not " \
           "graded." in results["output"].splitlines()
    assert "autograder" not in results["output"].lower()
