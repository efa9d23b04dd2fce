"""Write submission.zip (your two files, the write-up, and the training curve and sample grid of the run
that --run names, copied into writeup/figures/ where the write-up's image links point), then check it as
the autograder will read it: read back, and the self-check run on the zip's own copies of your files."""
import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from codebase.config import SAMPLES, TRAINING_CURVE, Config

STUDENT_FILES = ("codebase/utils.py", "codebase/models/gmvae.py")  # what the autograder takes and trains
WRITEUP = "writeup/README.md"
FIGURES = {TRAINING_CURVE: "writeup/figures/training_curve.png",  # the write-up's image links
           SAMPLES["binary"]: "writeup/figures/samples_binary.png"}
MAX_SOURCE_BYTES = 256 << 10  # the autograder refuses a larger student file


class SubmitError(Exception):
    """The zip cannot be made, or the autograder could not read it; the message says what to do."""


def gather(folder, run):
    """{name in the zip: file} after copying run `run`'s figures into writeup/figures/, and notes for the student."""
    notes, files = [], {}
    for name in (*STUDENT_FILES, WRITEUP):
        if not (folder / name).is_file():
            raise SubmitError(f"{name} is missing from {folder}: run this from your project's folder")
        files[name] = folder / name
    logs = folder / Config(run=run).log_dir
    for produced, figure in FIGURES.items():
        if (logs / produced).is_file():
            (folder / figure).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(logs / produced, folder / figure)
        if (folder / figure).is_file():
            files[figure] = folder / figure
        else:
            notes.append(f"no {logs / produced}: the write-up's figure {figure} is missing (train first: "
                         f"{Config(run=run).command()})")
    return files, notes


def read_back(zip_path):
    """{name: text} of the student files as the autograder reads them from the zip; SubmitError if it cannot."""
    texts = {}
    with zipfile.ZipFile(zip_path) as z:
        if broken := z.testzip():
            raise SubmitError(f"{broken} is damaged in {zip_path} (bad CRC): run this command again")
        for name in STUDENT_FILES:
            data = z.read(name)
            if len(data) > MAX_SOURCE_BYTES:
                raise SubmitError(f"{name} is {len(data):,} bytes; the autograder refuses more than "
                                  f"{MAX_SOURCE_BYTES:,}")
            try:
                texts[name] = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SubmitError(f"{name} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}): "
                                  "save it as UTF-8 in your editor") from None
    return texts


def self_check(folder, texts):
    """(exit status, output) of python -m codebase.check in a copy of codebase/ holding the zip's files."""
    with tempfile.TemporaryDirectory(prefix="submit-check-") as scratch:
        shutil.copytree(folder / "codebase", Path(scratch) / "codebase", ignore=shutil.ignore_patterns("__pycache__"))
        for name, text in texts.items():
            (Path(scratch) / name).write_text(text, encoding="utf-8")
        out = subprocess.run([sys.executable, "-m", "codebase.check"], cwd=scratch, capture_output=True, text=True,
                             timeout=600)
    return out.returncode, out.stdout + out.stderr


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m codebase.submit", description=__doc__)
    parser.add_argument("--run", type=int, default=0, help="the GMVAE run whose figures the write-up shows")
    parser.add_argument("--out", default="submission.zip", help="the zip to write")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        files, notes = gather(Path.cwd(), args.run)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for name, path in files.items():
                z.write(path, name)
        texts = read_back(out)
    except (SubmitError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {out} ({out.stat().st_size / 1024:.0f} kB):")
    for name, path in files.items():
        print(f"  {name} ({path.stat().st_size:,} bytes)")
    for note in notes:
        print(f"Note: {note}")
    status, report = self_check(Path.cwd(), texts)
    print(f"The self-check on the zip's files: {(report.strip().splitlines() or ['?'])[-1]}")
    for line in report.splitlines():
        if line.startswith("FAIL"):
            print(f"  {line}")
    if status != 0:
        print("The autograder gives no points to a function whose check fails; fix it and run this again.")
        return 1
    print("Upload the zip to Gradescope's code assignment, and writeup/README.md as a PDF to the write-up "
          "assignment (see README.md, \"How to submit\").")
    return 0


if __name__ == "__main__":
    sys.exit(main())
