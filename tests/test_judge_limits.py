"""The judge reads files that the student's code wrote: a file of a few kilobytes must not make it
allocate gigabytes. Every shape and storage size is checked before any tensor is computed with, only
uncompressed members are loaded, the judge runs under an address-space limit, and a file refused is the
submission's fault (its check FAILs, its checkpoint cannot be used), never the grader's.
"""
import io
import json
import os
import resource
import subprocess
import sys
import time
import zipfile

import pytest
import torch

from codebase.check import compare
from codebase.check.figures import GRADED_SETTING
from codebase.models import GMVAE
from course import judge
from course.collect import ROOT
from course.settings import LIMITS

FAR = "log_normal_mixture: far points, tiny variances"  # a check whose results hold a gradient
SEED = 5


def saved(value):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def deflated(data):
    """torch.save's bytes with every member compressed, which torch.load still reads."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as inside, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info in inside.infolist():
            z.writestr(info.filename, inside.read(info))
    return out.getvalue()


def far_results(gradient):
    """A probe's results of FAR: the right value, and `gradient` as the gradient with respect to z."""
    want = judge.references.expected(judge.by_name(FAR), SEED)["far"]["want"]
    return {"name": FAR, "results": {"far": want.float(), "far grads": {"requires_grad": True, "grads": [gradient]}}}


def verdict_of(folder, data):
    (folder / f"{FAR}.pt").write_bytes(data)
    return judge.judge_checks(SEED, [FAR], folder)[FAR]


def test_an_expanded_gradient_is_refused_before_anything_computes_with_it(tmp_path):
    """A view of one zero that claims 40 million values (the attack used 3e9: 21 GB) is refused from its
    metadata, by the loader and by judge_grads alike."""
    expanded = torch.zeros(1).expand(40_000_000)
    data = saved(far_results(expanded))
    assert len(data) < 4000
    start = time.monotonic()
    v = verdict_of(tmp_path, data)
    assert time.monotonic() - start < 0.5
    assert not v["passed"] and "claims more values than its data holds" in v["line"], v
    with pytest.raises(compare.Failure, match="a view of shape"):
        compare.judge_grads(None, {"requires_grad": True, "grads": [expanded]}, {"names": ["z"], "nonfinite": "x"})


def test_a_compressed_member_is_refused_before_it_is_unpacked(tmp_path):
    data = deflated(saved(far_results(torch.zeros(2_500_000))))  # 10 MB of zeros in about 10 kB
    assert len(data) < 20_000
    v = verdict_of(tmp_path, data)
    assert not v["passed"] and "compressed or encrypted member" in v["line"], v


def test_honest_results_still_load(tmp_path):
    v = verdict_of(tmp_path, saved(far_results(torch.ones(3, 10))))
    assert "cannot be read" not in v["line"], v


def test_a_compressed_or_expanded_checkpoint_is_the_submissions(tmp_path):
    z, k = GRADED_SETTING["gmvae"]["z"], GRADED_SETTING["gmvae"]["k"]
    state = GMVAE(z_dim=z, k=k).state_dict()
    path = tmp_path / "model.pt"
    path.write_bytes(saved({"model": state}))
    assert judge.trained_state(path)[1] is None  # as training writes it: usable
    path.write_bytes(deflated(saved({"model": state})))
    assert judge.trained_state(path) == (None, "the checkpoint cannot be used: it holds a compressed or encrypted "
                                               "member, which torch.save never writes")
    name = next(iter(state))
    path.write_bytes(saved({"model": {**state, name: torch.zeros(1).expand(state[name].shape)}}))
    assert "claims more values than its data holds" in judge.trained_state(path)[1]
    path.write_bytes(b"PK\x03\x04 not a zip")
    assert judge.trained_state(path)[1] == "the checkpoint cannot be used: it is not a file that torch.save writes"


def test_the_judge_limits_its_own_address_space(tmp_path, monkeypatch):
    """main() sets the limit first; limit_memory sets it, seen in a forked child so that pytest keeps its own."""
    limit_memory, called = judge.limit_memory, []
    monkeypatch.setattr(judge, "limit_memory", lambda: called.append(True))
    assert judge.main(["--seed", "5", "--probe", str(tmp_path), "--out", str(tmp_path / "o.json")]) == 0
    assert called == [True]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            limit_memory(64.0)  # above what pytest's process maps already, so that it can still write
            os.write(write, json.dumps(resource.getrlimit(resource.RLIMIT_AS)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert json.loads(os.read(read, 1000)) == [64 << 30, 64 << 30]
    os.close(read)


@pytest.mark.slow
def test_the_judge_refuses_a_3e9_gradient_in_little_memory_and_time(tmp_path):
    """The attack as it was: a 1.6 kB file whose gradient claims 3e9 values, judged by course.judge in its
    own process. The test caps that process at 8 GB, so that a judge without the fix fails here instead of
    taking the machine's memory."""
    data = saved(far_results(torch.zeros(1).expand(3_000_000_000)))
    assert len(data) < 4000  # the want tensor makes it larger than the attack's 1.6 kB
    (tmp_path / f"{FAR}.pt").write_bytes(data)
    cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    argv = [sys.executable, "-m", "course.judge", "--seed", str(SEED), "--probe", str(tmp_path), "--out",
            str(tmp_path / "judged.json"), "--checks", FAR]
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, preexec_fn=cap, env={**os.environ, "OMP_NUM_THREADS": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0 and time.monotonic() - start < 60
    assert usage.ru_maxrss < LIMITS.memory_gb * (1 << 20) / 4  # kB: well under the judge's limit
    line = json.loads((tmp_path / "judged.json").read_text())["checks"][FAR]["line"]
    assert line.startswith(f"FAIL  {FAR}: its results cannot be read: ") and "claims more values" in line, line
