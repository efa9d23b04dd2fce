#!/usr/bin/env bash
# The full grading of the model answer, the way Gradescope does it, once:
#   1. build autograder.zip and unpack it as /autograder/source would be (in a temporary folder);
#   2. run the zip's own setup.sh there: a fresh venv with the pinned requirements, and MNIST
#      (copied from this checkout's data/ when it has it, then md5-checked by setup.sh);
#   3. put the model answer's two files in submission/ and run the zip's run_autograder, with the
#      graded 20,000 training iterations;
#   4. print the score, every test, who the student code ran as, the venv's size and the wall
#      times; exit 1 unless the score is 100.
#
#   bash course/ci_full_grade.sh
#
# Settings: PYTHON (the Python for the venv; default /usr/bin/python3 when it is 3.11 or newer,
# whose files the sandbox user can read, else python3), BUILD_PYTHON (a Python with torch, which
# building the zip needs for the starter's stored expected values; default .venv/bin/python),
# TORCH_INDEX (default empty: the machine's ordinary pip configuration; setup.sh's own default on
# Gradescope is PyTorch's CPU index), AUTOGRADER_FLAGS (more flags for the grade command, e.g.
# "--threads 1" on a shared machine).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    if /usr/bin/python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PYTHON=/usr/bin/python3
    fi
fi
export PYTHON TORCH_INDEX="${TORCH_INDEX-}"
BUILD_PYTHON="${BUILD_PYTHON:-$REPO/.venv/bin/python}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/autograder-ci.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"
export AUTOGRADER_ROOT="$WORK"  # setup.sh and run_autograder use it in place of /autograder
started=$SECONDS

# 1. The zip, unpacked as Gradescope does.
(cd "$REPO" && "$BUILD_PYTHON" -m course.autograder build "$WORK/autograder.zip")
"$PYTHON" -m zipfile -e "$WORK/autograder.zip" "$WORK/source"
cp "$WORK/source/run_autograder" "$WORK/run_autograder" && chmod +x "$WORK/run_autograder"

# 2. setup.sh, as Gradescope runs it when it builds the image.
if [ -d "$REPO/data/MNIST/raw" ]; then
    mkdir -p "$WORK/source/data/MNIST" && cp -rL "$REPO/data/MNIST/raw" "$WORK/source/data/MNIST/raw"
fi
bash "$WORK/source/setup.sh"
installed=$SECONDS

# 3. One submission: the model answer's two files, loose.
mkdir -p "$WORK/submission" "$WORK/results"
cp "$REPO/codebase/utils.py" "$REPO/codebase/models/gmvae.py" "$WORK/submission/"
# shellcheck disable=SC2086
(cd "$WORK" && ./run_autograder ${AUTOGRADER_FLAGS:-} > "$WORK/stdout.txt")
graded=$SECONDS

# 4. What the student would see, and the times.
"$WORK/venv/bin/python" - "$WORK/results/results.json" <<'EOF'
import json, sys
results = json.load(open(sys.argv[1]))
for test in results["tests"]:
    print(f"{test['score']:>6g} / {test['max_score']:<3g} {test['name']}: {test['output'].splitlines()[0]}")
extra = results["extra_data"]
print(f"training step (as the run says): {extra.get('training_step')}")
print(f"score: {results['score']:g} / 100; the student's code ran {extra['sandbox']}; "
      f"grading took {results['execution_time']:.0f} s (results.json's execution_time: "
      + ", ".join(f"{part} {seconds:.0f} s" for part, seconds in extra["seconds"].items()) + ")")
sys.exit(0 if results["score"] == 100 else 1)
EOF
echo "wall time: install $((installed - started)) s (setup.sh and the zip), grading $((graded - installed)) s"
