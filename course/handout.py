"""Make the student starter from this model answer.

    python -m course.handout DEST                      # the problem set's two functions stripped
    python -m course.handout DEST --variant full       # every marked function stripped
    python -m course.handout DEST --strip kl_normal    # the default two, and kl_normal too

writes the starter as the folder DEST and as DEST.zip. The same commit always gives
the same bytes (the zip's timestamps are fixed).

A solution region in the model answer's source is

    # BEGIN SOLUTION <tag>
    # STUB: <a line of the stub>          (one or more; the stub is these lines, uncommented)
    <the answer's lines>
    # END SOLUTION

The markers are comments, so the model answer runs as it is. In the starter, a stripped
region is replaced by its stub at the same indentation; a region that is not stripped
loses only its marker and STUB lines. Nothing else changes. A malformed marker (an
unknown or missing tag, a region inside a region, a BEGIN without an END, an END or a
STUB outside a region, a region without a stub) stops the generator with one line
naming the file and the line, before anything is written.
"""
import argparse
import io
import re
import shutil
import string
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from codebase.check import figures as reference

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

# Every tag a region may carry, and what a student writes when it is stripped.
TAGS = {
    "log_normal_mixture": "codebase/utils.py: log_normal_mixture (Problem 3.1)",
    "gmvae_negative_elbo_bound": "codebase/models/gmvae.py: GMVAE.negative_elbo_bound (Problem 3.1)",
    "log_normal": "codebase/utils.py: log_normal",
    "kl_normal": "codebase/utils.py: kl_normal",
    "sample_gaussian": "codebase/utils.py: sample_gaussian",
    "log_bernoulli_with_logits": "codebase/utils.py: log_bernoulli_with_logits",
    "vae_negative_elbo_bound": "codebase/models/vae.py: VAE.negative_elbo_bound",
    "iwae_bound": "codebase/models/base.py: log_importance_weights and negative_iwae_bound",
}
VARIANTS = {
    # The problem set as handed out: its two functions, and the importance-weighted bound, which the
    # problem set does not ask for and which computes the bound's terms (keep it with --keep iwae_bound).
    "default": ("log_normal_mixture", "gmvae_negative_elbo_bound", "iwae_bound"),
    "full": tuple(TAGS),  # every function of both models, for a harder edition
}

# The files of the model answer that students get, as they are but for stripped regions.
# Not listed, so never handed out: course/ (this tooling and the autograder), writeup/
# (proofs, results and figures), benchmarks/, .ci/, the other tests, checkpoints, logs, data.
COPIED = (
    "run_gmvae.py", "run_vae.py", "requirements.txt", "checkpoints/.gitkeep", "logs/.gitkeep",
    "tests/test_utils.py", "tests/test_models.py",
)
COPIED_TREES = ("codebase",)
# In the copied trees but never handed out: the self-check's references compute every checked function.
# The starter gets their values for the local seed instead (STORED).
INSTRUCTOR_ONLY = ("codebase/check/references.py",)
STORED = "codebase/check/expected.pt"
# Written for the starter from course/starter/: the student README, the write-up template, .gitignore, and
# the test settings (the model answer's hold the instructor's tests and pins).
STARTER_ONLY = {"README.md": "README.md", "writeup/README.md": "writeup.md", ".gitignore": "gitignore",
                "pytest.ini": "pytest.ini", "tests/conftest.py": "conftest.py",
                "requirements-dev.txt": "requirements-dev.txt"}

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION(?: (?P<tag>\S+))?[ \t]*$")
STUB = re.compile(r"^(?P<indent>[ \t]*)# STUB:(?: (?P<line>.*))?$")
END = re.compile(r"^[ \t]*# END SOLUTION[ \t]*$")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: no build time leaks in


class MarkerError(ValueError):
    """A malformed solution marker; the message names the file and the line."""


@dataclass
class Region:
    tag: str
    start: int  # index of the BEGIN line
    end: int  # index of the END line
    indent: str
    stub: list  # the stub's lines, uncommented and indented
    body: list  # the answer's lines


def parse(text, name):
    """The solution regions of a source file, in order.

    Args:
        text: str: the file's content
        name: str: the file's path, for messages

    Returns:
        regions: list of Region

    Raises:
        MarkerError: on a malformed marker
    """
    regions, open_region = [], None
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        where = f"{name}:{i + 1}"
        bare = line.rstrip("\r\n")
        begin, stub, end = BEGIN.match(bare), STUB.match(bare), END.match(bare)
        if begin:
            if open_region:
                raise MarkerError(f"{where}: BEGIN SOLUTION inside the region begun at line {open_region.start + 1}")
            tag = begin.group("tag")
            if tag not in TAGS:
                raise MarkerError(f"{where}: {'unknown tag ' + repr(tag) if tag else 'BEGIN SOLUTION without a tag'}"
                                  f"; known tags: {', '.join(TAGS)}")
            open_region = Region(tag, i, -1, begin.group("indent"), [], [])
        elif stub:
            if not open_region or open_region.body:
                raise MarkerError(f"{where}: a STUB line must follow its BEGIN SOLUTION line")
            open_region.stub.append(f"{stub.group('indent')}{stub.group('line') or ''}".rstrip() + "\n")
        elif end:
            if not open_region:
                raise MarkerError(f"{where}: END SOLUTION without a BEGIN SOLUTION")
            if not open_region.stub:
                raise MarkerError(f"{where}: the region begun at line {open_region.start + 1} has no '# STUB:' line")
            open_region.end = i
            regions.append(open_region)
            open_region = None
        elif "BEGIN SOLUTION" in bare or "END SOLUTION" in bare or "# STUB:" in bare:
            raise MarkerError(f"{where}: a marker must be alone on its line, as '# BEGIN SOLUTION <tag>', "
                              "'# STUB: <line>' or '# END SOLUTION'")
        elif open_region:
            if open_region.body == [] and not open_region.stub:
                raise MarkerError(f"{where}: the region begun at line {open_region.start + 1} has no '# STUB:' line")
            open_region.body.append(line)
    if open_region:
        raise MarkerError(f"{name}:{open_region.start + 1}: BEGIN SOLUTION without an END SOLUTION")
    return regions


def strip(text, name, tags):
    """The starter's version of a source file: regions with `tags` become their stubs.

    Args:
        text: str: the model answer's file
        name: str: its path, for messages
        tags: collection of str: the tags to strip

    Returns:
        text: str
    """
    lines = text.splitlines(keepends=True)
    out, i = [], 0
    for region in parse(text, name):
        out += lines[i:region.start]
        out += region.stub if region.tag in tags else region.body
        i = region.end + 1
    return "".join(out + lines[i:])


def restore(starter, answer, name, tags):
    """Put the answer's regions back into a starter file: the inverse of `strip`.

    Each stub (a stripped region) or kept body (the others) is looked for after the
    previous one and replaced by the whole region, markers included.

    Args:
        starter: str: the starter's file
        answer: str: the model answer's file, whose regions are put back
        name: str: its path, for messages
        tags: collection of str: the tags that were stripped

    Returns:
        text: str
    """
    answer_lines = answer.splitlines(keepends=True)
    out, rest = "", starter
    for region in parse(answer, name):
        placed = "".join(region.stub if region.tag in tags else region.body)
        at = rest.find(placed)
        if at < 0:
            raise MarkerError(f"{name}: the starter has no place for region {region.tag!r}")
        out += rest[:at] + "".join(answer_lines[region.start:region.end + 1])
        rest = rest[at + len(placed):]
    return out + rest


def answer_files(root=None):
    """{path in the starter: path in the model answer} of every copied file, sorted (root: this repo)."""
    root = Path(root or ROOT)
    files = {name: root / name for name in COPIED}
    for tree in COPIED_TREES:
        for path in (root / tree).rglob("*"):
            name = path.relative_to(root).as_posix()
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc" \
                    and name not in INSTRUCTOR_ONLY and name != STORED:
                files[name] = path
    return dict(sorted(files.items()))


def starter_files(tags, root=None, stored=True):
    """{path: bytes} of the whole starter, stripped of `tags`; stored: with the self-check's stored
    expected values (STORED), which take a few seconds to compute.

    Raises:
        MarkerError: on a malformed marker in any source file
        FileNotFoundError: if a listed file is missing
    """
    files = {}
    for name, path in answer_files(root).items():
        data = path.read_bytes()
        if path.suffix == ".py":
            data = strip(data.decode(), name, tags).encode()
        files[name] = data
    for name, template in STARTER_ONLY.items():
        text = (HERE / "starter" / template).read_text()
        files[name] = string.Template(text).substitute(starter_facts()).encode()
    if stored:
        files[STORED] = stored_expected_values()
    return dict(sorted(files.items()))


def stored_expected_values():
    """The bytes of the starter's expected.pt: every check's expected values on the local self-check's
    inputs, computed by the references that the starter does not get."""
    import torch

    from codebase.check import references
    from codebase.check.inputs import SEED
    from codebase.check.registry import CHECKS
    buffer = io.BytesIO()
    torch.save({"seed": SEED, "checks": {c.name: references.expected(c, SEED) for c in CHECKS}}, buffer)
    return buffer.getvalue()


def starter_facts():
    """The figures the student README quotes, from codebase/check/figures.py (their one home)."""
    def span(term):
        low, high = reference.accepted_range("gmvae", term)
        return f"{low:g} to {high:g}"

    return {"handout_nelbo": f"{reference.HANDOUT_GMVAE_NELBO:g}", "gmvae_nelbo": span("nelbo"),
            "gmvae_kl": span("kl"), "gmvae_rec": span("rec")}


def zip_bytes(files):
    """A zip of {path: bytes} whose bytes depend on the files alone (fixed times and modes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


def write(dest, files, overwrite=False):
    """Write the starter as the folder `dest` and the zip `dest`.zip.

    Both are built next to their destinations and renamed into place, so a failure
    leaves no half-written starter.
    """
    dest = Path(dest)
    archive = dest.with_name(dest.name + ".zip")
    for path in (dest, archive):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists already; remove it or add --overwrite")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        folder = Path(tmp) / "starter"
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        (Path(tmp) / "starter.zip").write_bytes(zip_bytes(files))
        if dest.exists():
            shutil.rmtree(dest)
        folder.rename(dest)
        (Path(tmp) / "starter.zip").replace(archive)
    return dest, archive


def chosen_tags(variant, extra, keep=()):
    tags = (set(VARIANTS[variant]) | set(extra or ())) - set(keep or ())
    unknown = (tags | set(keep or ())) - set(TAGS)
    if unknown:
        raise MarkerError(f"unknown tag(s) {', '.join(sorted(unknown))}; known tags: {', '.join(TAGS)}")
    return tags


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m course.handout",
        description="Write the student starter (folder DEST and DEST.zip) from this model answer.")
    p.add_argument("dest", help="the starter's folder; DEST.zip is written beside it")
    p.add_argument("--variant", choices=VARIANTS, default="default",
                   help="default: the problem set's two functions; full: every marked function")
    p.add_argument("--strip", action="append", metavar="TAG", choices=TAGS,
                   help="also strip the regions with this tag (repeatable)")
    p.add_argument("--keep", action="append", metavar="TAG", choices=TAGS,
                   help="keep the regions with this tag that the variant strips, e.g. iwae_bound (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace DEST and DEST.zip if they exist")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        tags = chosen_tags(args.variant, args.strip, args.keep)
        dest, archive = write(args.dest, starter_files(tags), args.overwrite)
    except (MarkerError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Starter written to {dest}/ and {archive}; stripped: {', '.join(sorted(tags))}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
