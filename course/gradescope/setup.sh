#!/usr/bin/env bash
# Gradescope runs this once, as root and with network access, when it builds the grading image.
# It installs the pinned requirements (torch's CPU-only build) into a venv, puts md5-verified MNIST
# beside the grading code, and makes sure that the sandbox's users can run that Python and read
# MNIST, but not the grading code. Grading itself then needs no network.
#
# Settings (environment variables), for running it elsewhere, e.g. course/ci_full_grade.sh:
#   AUTOGRADER_ROOT  where the venv goes, as $AUTOGRADER_ROOT/venv (default /autograder)
#   PYTHON           the Python to make the venv from (default python3; 3.11 or newer)
#   TORCH_INDEX      the index of torch's CPU-only wheels (default PyTorch's); empty: the ordinary
#                    pip configuration, which on PyPI gets the CUDA build, several GB larger
set -euo pipefail
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${AUTOGRADER_ROOT:-/autograder}"
VENV="$ROOT/venv"
PYTHON="${PYTHON:-python3}"
TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}"

new_enough() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
if ! new_enough "$PYTHON"; then
    # Gradescope's Ubuntu images: python3 may be older than 3.11 or lack venv; Ubuntu has python3.11.
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3.11 python3.11-venv
        PYTHON=python3.11
    fi
    new_enough "$PYTHON" || { echo "setup.sh: needs Python 3.11 or newer with venv (PYTHON=$PYTHON)" >&2; exit 1; }
fi

# torch.compile's CPU backend builds C++: with g++ the training step compiles (--compile auto), and
# without it a run trains eagerly, only slower.
if ! command -v g++ >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q g++; } \
        || echo "setup.sh: g++ could not be installed; the training step will run eagerly" >&2
fi

"$PYTHON" -m venv "$VENV"
TORCH_PIN="$(grep -E '^torch==' "$SOURCE/course/gradescope/requirements.txt")"
if [ -n "$TORCH_INDEX" ]; then
    # torch alone from the CPU-only index: PyPI's torch for Linux is the CUDA build.
    "$VENV/bin/pip" install -q --index-url "$TORCH_INDEX" "$TORCH_PIN"
fi
"$VENV/bin/pip" install -q -r "$SOURCE/course/gradescope/requirements.txt"

cd "$SOURCE"
PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" -m codebase.data --data-dir "$SOURCE/data"

# The student's code runs as users of no account: they must read (never write) the venv and MNIST,
# through folders that all may traverse, and must not read the grading code or the references.
chmod -R a+rX,go-w "$VENV" "$SOURCE/data"
chmod -R go-rwx "$SOURCE/course" "$SOURCE/codebase/check/references.py"
chmod 711 "$SOURCE"  # traversable to reach data/, not listable
folder="$ROOT"
while [ "$folder" != "/" ]; do chmod o+x "$folder"; folder="$(dirname "$folder")"; done
for folder in "$SOURCE"/data "$SOURCE"/data/MNIST; do chmod 755 "$folder"; done

# Refuse to build an image in which the grader would refuse to grade.
"$VENV/bin/python" -c '
import sys
from course.sandbox import Sandbox, SandboxError
try:
    box = Sandbox.open(sys.argv[1], sys.argv[2], sys.argv[3])
    box.close()
except SandboxError as e:
    sys.exit(f"setup.sh: {e}")
print("setup.sh: the sandbox user can run the grader'"'"'s Python with torch and read MNIST, not the references")
print(f"setup.sh: the student'"'"'s code runs {box.describe()} (each grading measures this again)")
' "$VENV/bin/python" "$SOURCE/data" "$SOURCE/codebase/check/references.py"
"$VENV/bin/python" -c 'import torch; print(f"setup.sh: torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}")'
du -sh "$VENV" | sed 's/^/setup.sh: venv size /'
