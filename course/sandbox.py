"""The sandbox in which the grader runs a student's code: a user of its own, and limits.

When the grader is root (as on Gradescope), each grading claims a user id that nothing else uses
(CLAIMED_UIDS, reserved by a lock file) and runs every child process of the student's code as that
user, with no supplementary groups and no_new_privs set (so setuid programs do not raise it), in a
private work folder that only that user and root can enter. Each child has limits (LIMITS, in
course/settings.py): its run time, its address space, the size of any one file, the number of
processes and threads of the user, and the total disk that the user's files take; past a limit the
child is stopped and the student told which. When a child ends, every process of that user is
killed, whatever session or group it moved to, and its System V objects removed, so nothing outlives it.
The children open no internet socket, and where the container allows a mount namespace, write nowhere but
their work folder (course/confine.py). If the user cannot run the grader's Python with torch and read
MNIST, or could reach the network, the grader refuses to grade (SandboxError): it never runs submitted
code as root.

As another user than root (a local regrade), the student's code runs as that user: only the time,
memory, file-size and output limits hold, and a child is killed with its process group alone.

What the children leave is read, shown and removed by course/untrusted.py.
"""
import errno
import fcntl
import os
import random
import resource
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from course import confine
from course.child import DRAIN_SECONDS, Clock, Outcome, Pipes
from course.settings import LIMITS
from course.untrusted import remove

CLAIMED_UIDS = range(40000, 60000)  # inside what a container's user namespace usually maps (0 to 65535)
LOCKS = Path(tempfile.gettempdir()) / "autograder-uids"  # root's alone; <uid>.lock held while a grading uses it
# Where any user may write outside the work folder, where the children cannot be given a read-only view
# (confine.private_mounts): counted against the disk bound, and emptied of the user's files.
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
NETWORK_WORDS = {"seccomp": "no internet sockets (a seccomp filter)", "netns": "no network (a namespace of its own)"}
# Run as the sandbox user by the grader's Python: it must import torch and read the MNIST folder, and
# must not read the grading's secret (the references, which compute the answer): exit 4 if it can; nor
# open an internet socket: exit 5 if it can.
CAN_RUN = """import os, socket, sys
import torch
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    sys.exit(5)
except PermissionError:
    pass
for name in sorted(os.listdir(sys.argv[1])):
    with open(os.path.join(sys.argv[1], name), "rb") as f:
        f.read(16)
try:
    open(sys.argv[2], "rb").close()
except OSError:
    sys.exit(0)
sys.exit(4)
"""


class SandboxError(RuntimeError):
    """The sandbox cannot be set up; nothing may be graded. The message says what to fix."""


class StillWriting(OSError):
    """A folder of the student's could not be emptied: its process keeps writing into it."""


@dataclass
class Sandbox:
    """Who runs the student's code, and under which limits."""
    uid: int = None  # None: as this process's user (not root)
    memory_gb: float = LIMITS.memory_gb
    threads: int = 1
    disk_mb: int = LIMITS.disk_mb
    processes: int = LIMITS.processes
    network: tuple = ()  # how the children are kept off the network: keys of confine.NETWORK_WAYS
    private_mounts: bool = False  # the children see every file system read-only but their work folder
    _lock: int = None  # the fd of the uid's lock file

    @property
    def gid(self):
        return self.uid  # a group of its own, as unused as the uid

    @staticmethod
    def open(python, data_dir, secret="/nonexistent", memory_gb=LIMITS.memory_gb, threads=1,
             disk_mb=LIMITS.disk_mb):
        """A sandbox for one grading: as root, under a uid of its own that can run `python` with torch
        and read `data_dir`/MNIST/raw, but not `secret`; else as this user.

        Raises:
            SandboxError: root, but the claimed user cannot run the grader's Python or read MNIST, or
                can read the secret
        """
        box = Sandbox(None, memory_gb, threads, disk_mb, LIMITS.processes + LIMITS.processes_per_thread * threads)
        box.network = confine.network_ways()
        if os.geteuid() != 0:
            return box
        if not box.network:
            raise SandboxError("neither a seccomp filter nor a network namespace can be set here, so the "
                               "submission's code could reach the network; refusing to grade. Run the grader "
                               "where seccomp filters are allowed (Docker's default profile allows them).")
        with tempfile.TemporaryDirectory() as folder:
            box.private_mounts = confine.can(lambda: confine.private_mounts(folder, LIMITS.shm_mb << 20))
        box.uid, box._lock = _claim_uid()
        raw = Path(data_dir) / "MNIST" / "raw"
        try:
            outcome = box.run([str(python), "-c", CAN_RUN, str(raw), str(secret)], "/", {"PATH": "/usr/bin:/bin"},
                              LIMITS.can_run_seconds, writable=None)
            problem = "" if outcome.returncode == 0 else outcome.why(memory_gb)
        except (OSError, subprocess.SubprocessError) as e:  # the latter: what the child set up before exec failed
            outcome, problem = None, f"{type(e).__name__}: {e}"
        if problem:
            box.close()
            if outcome is not None and outcome.returncode == 5:
                raise SandboxError(f"the sandbox user (uid {box.uid}) can open an internet socket despite "
                                   f"{' and '.join(box.network)}; refusing to grade.")
            if outcome is not None and outcome.returncode == 4:
                raise SandboxError(f"the sandbox user (uid {box.uid}) can read {secret}, which computes the answer; "
                                   "refusing to grade. Grade from the autograder zip's layout, as setup.sh sets it "
                                   "up, where only root reads the grading code.")
            raise SandboxError(
                f"the sandbox user (uid {box.uid}) cannot run {python} with torch and read {raw} ({problem}); "
                "refusing to run the submission as root. Install the grader's Python, its packages and MNIST "
                "where every user can read them, with every folder on their paths traversable (setup.sh does).")
        return box

    def describe(self):
        network = " and ".join(NETWORK_WORDS[w] for w in self.network) or "the network open"
        if self.uid is None:
            return f"as this process's user (uid {os.geteuid()}), not in a sandbox: the grader is not root; {network}"
        mounts = "writing only its work folder" if self.private_mounts else "writing its work folder and /tmp's like"
        return f"as uid {self.uid}, a user of its own for this grading, with no privileges, {mounts}; {network}"

    def _preexec(self, writable):
        """What the child does after fork, before it runs the student's code; `writable`: the only folder it
        may write into (with private_mounts), or None."""
        memory, uid = int(self.memory_gb * (1 << 30)), self.uid

        def apply():
            os.umask(0o077)
            open("/proc/self/oom_score_adj", "w").write("1000")  # RLIMIT_AS bounds each alone: OOM kills these first
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_FSIZE, (LIMITS.file_mb << 20, LIMITS.file_mb << 20))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))  # no POSIX message queue, which would outlive it
            if uid is not None:
                resource.setrlimit(resource.RLIMIT_NPROC, (self.processes, self.processes))
                if self.private_mounts:
                    confine.private_mounts(writable, LIMITS.shm_mb << 20)
                if "netns" in self.network:
                    confine.network_namespace()
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            confine.no_new_privileges()
            if "seccomp" in self.network:
                confine.seccomp_network_filter()

        return apply

    def run(self, argv, cwd, env, timeout, progress=None, writable=""):
        """Run argv in cwd as the sandbox user; stop it at `timeout` s or at a limit, then kill what it left.

        progress: (count, step, startup) or None: count() is how far the child has come (a number that grows);
            it is stopped once `step` s pass without growth (`startup` s before the first)
        writable: the only folder the child may write into, where the sandbox has private mounts: cwd if "",
            none if None
        """
        began = time.monotonic()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                                preexec_fn=self._preexec(cwd if writable == "" else writable))
        pipes, clock = Pipes(proc), Clock(began, timeout, progress)
        stopped, timed_out = "", False
        try:
            stopped, timed_out = self._watch(proc, pipes, clock, cwd)
        finally:
            pipes.close()
            self._end(proc)
        # Files outlive their writer: a child that ended between two looks is still past the disk bound.
        stopped = stopped or self._over_a_limit(cwd, processes=False)
        now = time.monotonic()
        return Outcome(proc.returncode, timed_out, pipes.out, pipes.err, stopped, now - began,
                       clock.stalled(now) if timed_out else 0.0, clock.steps)

    def _watch(self, proc, pipes, clock, cwd):
        """Keep the child's output until it ends and its pipes close, or it passes its time or a limit.

        Returns:
            stopped: str: the limit it passed, in words, or ""
            timed_out: bool: it was still running when its time ran out
        """
        drain_until = None
        while True:
            now = time.monotonic()
            if clock.look(now):
                stopped = self._over_a_limit(cwd)
                if stopped:
                    return stopped, False
            if clock.over(now):
                return "", proc.poll() is None
            if proc.poll() is not None:
                drain_until = drain_until or now + DRAIN_SECONDS
                if not pipes.open or now >= drain_until:
                    return "", False
            pipes.read(clock.wait(now))

    def _end(self, proc):
        """Kill the child's process group and every process of the user, and reap the child."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.kill_all()
        if self.uid is not None:
            confine.remove_ipc(self.uid, self.gid)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    # --- the user's processes and files ---

    def _processes(self):
        """{pid: threads} of the sandbox user's live processes."""
        found = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:
                continue
            zombie = fields.get("State", "").strip().startswith("Z")  # dead, waiting only to be reaped
            if not zombie and self.uid in map(int, fields.get("Uid", "").split()):
                found[int(entry.name)] = int(fields.get("Threads", "1"))
        return found

    def kill_all(self):
        """Kill every process of the sandbox user, whatever session or group it moved to. A process in an
        uninterruptible wait dies when the wait ends: it is given 30 s."""
        if self.uid is None:
            return
        for attempt in range(60):
            if not self._processes():
                return
            pid = os.fork()
            if pid == 0:  # as the user: kill(-1) reaches all of its processes, and no others
                try:
                    os.setresgid(self.gid, self.gid, self.gid)
                    os.setresuid(self.uid, self.uid, self.uid)
                    os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
            time.sleep(min(0.02 * 2 ** attempt, 1.0))
        raise SandboxError(f"the processes of uid {self.uid} could not all be killed")

    def _owned(self, roots, limit=LIMITS.files + 1):
        """[path] of the files and folders the sandbox user owns under `roots` (at most `limit` of them),
        walking only folders that it owns or anyone may write into (nowhere else can it have created
        anything), without recursion however deep they go."""
        found, todo = [], [Path(r) for r in roots]
        while todo and len(found) < limit:
            folder = todo.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                mine = info.st_uid == self.uid
                if mine:
                    found.append(Path(entry.path))
                if stat.S_ISDIR(info.st_mode) and (mine or info.st_mode & 0o002):
                    todo.append(Path(entry.path))
        return found

    @property
    def shared_folders(self):
        """The folders outside its work folder where the sandbox user may write."""
        return () if self.private_mounts else WORLD_WRITABLE

    def disk_use(self, workdir):
        """(bytes on disk, count) of every file and folder of the sandbox user (the work folder and the shared
        temporary ones); the count stops past LIMITS.files."""
        owned, total = self._owned([workdir, *self.shared_folders]), 0
        for path in owned:
            try:
                total += os.lstat(path).st_blocks * 512
            except OSError:
                pass
        return total, len(owned)

    def _over_a_limit(self, workdir, processes=True):
        """The limit the sandbox user is past, in words, or ""."""
        if self.uid is None:
            return ""
        tasks = sum(self._processes().values()) if processes else 0
        if tasks >= self.processes - 2:
            return f"your code started {tasks} processes and threads; the limit is {self.processes}"
        size, count = self.disk_use(workdir)
        if size > self.disk_mb << 20:
            return f"your code's files took more than {self.disk_mb:,} MB of disk, the limit"
        if count > LIMITS.files:
            return f"your code made more than {LIMITS.files:,} files and folders, the limit"
        return ""

    def close(self):
        """Kill what is left of the user, delete its files outside the work folder, and free the uid."""
        if self.uid is not None:
            self.kill_all()
            confine.remove_ipc(self.uid, self.gid)
            # As many as the files limit lets a child leave before it is stopped. Its processes are dead.
            confine.remove_many(self._owned(self.shared_folders))
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # --- the work folder ---

    def make_workdir(self, files, writable):
        """A private work folder: `files` ({path: bytes}) read-only to the sandbox user, and the folders
        `writable`, which it owns. Only that user (by its group) and root can enter it."""
        workdir = Path(tempfile.mkdtemp(prefix="autograder-"))
        for name, data in files.items():
            path = workdir / name
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            path.write_bytes(data)
            os.chmod(path, 0o644)
        for folder in [workdir, *(p for p in workdir.rglob("*") if p.is_dir())]:
            os.chmod(folder, 0o755)
        if self.uid is not None:
            os.chown(workdir, 0, self.gid)
            os.chmod(workdir, 0o750)
        for name in writable:
            self.reset(workdir / name)
        return workdir

    def reset(self, path):
        """An empty folder at `path`, owned by the sandbox user. Every process of the user is killed first,
        so none can keep writing into it.

        Raises:
            StillWriting: it cannot be emptied (a process of the grader's own user keeps writing into it)
        """
        self.kill_all()
        for attempt in range(5):
            if remove(path):
                break
            if attempt == 4:
                raise StillWriting(errno.ENOTEMPTY, f"{path.name}/ could not be emptied")
            time.sleep(0.2)
        path.mkdir(mode=0o700)
        if self.uid is not None:
            os.chown(path, self.uid, self.gid)


def _claim_uid():
    """(uid, fd of its lock): a uid in CLAIMED_UIDS that no account, process or other grading uses."""
    accounts = set()
    try:
        with open("/etc/passwd") as f:
            accounts = {int(line.split(":")[2]) for line in f if line.count(":") >= 3 and line.split(":")[2].isdigit()}
    except OSError:
        pass
    LOCKS.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(LOCKS)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
        raise SandboxError(f"{LOCKS} is not a folder of root's alone; remove it")
    candidates = [u for u in random.sample(CLAIMED_UIDS, 200) if u not in accounts]
    for uid in candidates:
        try:
            fd = os.open(LOCKS / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another grading
            os.close(fd)
            continue
        if Sandbox(uid)._processes():  # left over from a grading that was killed: not free
            os.close(fd)
            continue
        return uid, fd
    raise SandboxError(f"no free user id in {CLAIMED_UIDS.start} to {CLAIMED_UIDS.stop - 1}")
