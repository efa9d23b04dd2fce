"""What keeps a child of the student's code from the network, from the machine's shared folders, and from
leaving System V objects behind (course/sandbox.py applies them; course/README.md says why these).

- NETWORK_WAYS, each that network_ways() finds can be set: seccomp_network_filter(), which refuses every
  socket() but a Unix one, and io_uring, whose socket operation a filter on socket() does not see; and
  network_namespace(), a network namespace of the child's own (as root), which also hides the machine's
  abstract Unix sockets. Where neither can be set, course/sandbox.py refuses to grade.
- private_mounts(workdir, shm_bytes): a mount namespace of the child's own in which every file system is
  read-only but the work folder, and /dev/shm is a small tmpfs that dies with the child.
- remove_ipc(uid, gid): the System V shared memory, semaphores and message queues of a user, removed.
Each of the first two runs in the child after fork, before exec; can() tries one in a throwaway child.
"""
import ctypes
import os
import platform
import re
import struct
import subprocess

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
# statvfs's ST_ flags that mount(2) takes back as the same MS_ bits: kept when a mount is made read-only,
# since a remount that drops nosuid or noexec is refused where they are locked, and would loosen them.
KEPT_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC | 16 | 1024 | 2048 | 4096  # also sync, noatime, nodiratime, relatime
# Nothing of these is the student's to write (proc's files of its own process hold no data), and some refuse
# a remount.
UNTOUCHED_TYPES = {"proc", "sysfs", "cgroup", "cgroup2"}

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
AF_UNIX = 1
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
EACCES = 13
# (audit arch, socket, io_uring_setup) of the machines the grader runs on
SYSCALLS = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}
X32_BIT = 0x40000000  # x86_64's x32 calls carry the same arch: without this test, they would pass the filter

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def no_new_privileges():
    """Set no_new_privs: setuid programs raise nothing, and a seccomp filter may be loaded without root."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _filter():
    """The classic BPF program, as bytes: socket() of any family but AF_UNIX, io_uring_setup(), every call of
    another arch (a 32-bit socketcall) and x32's calls fail with EACCES; every other call is let through."""
    arch, socket_nr, io_uring_nr = SYSCALLS[platform.machine()]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 8, 9
    program = [  # (code, k, where to go if true, if false): absolute indices, or None for the next
        (ld, 4, None, None),                 # 0: seccomp_data.arch
        (jeq, arch, None, deny),             # 1
        (ld, 0, None, None),                 # 2: seccomp_data.nr
        (jge, X32_BIT, deny, None),          # 3
        (jeq, io_uring_nr, deny, None),      # 4
        (jeq, socket_nr, None, allow),       # 5
        (ld, 16, None, None),                # 6: args[0], the family (an int: its low 32 bits)
        (jeq, AF_UNIX, allow, deny),         # 7
        (ret, RET_ALLOW, None, None),        # 8
        (ret, RET_ERRNO | EACCES, None, None),  # 9
    ]
    # A jump counts from the instruction after it.
    jump = lambda at, to: 0 if to is None else to - at - 1
    return b"".join(struct.pack("<HBBI", code, jump(i, jt), jump(i, jf), k)
                    for i, (code, k, jt, jf) in enumerate(program))


def seccomp_network_filter():
    """Load the filter into this process (inherited by all it starts); no_new_privs must already be set."""
    if platform.machine() not in SYSCALLS:
        raise OSError(0, f"no seccomp filter for {platform.machine()}")
    code = ctypes.create_string_buffer(_filter())
    program = _Program(len(code.raw) // 8, ctypes.addressof(code))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0), "seccomp")


def network_namespace():
    """A network namespace of this process's own: only a loopback, down. Needs root (CAP_SYS_ADMIN)."""
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


NETWORK_WAYS = {"seccomp": seccomp_network_filter, "netns": network_namespace}


def network_ways():
    """(name, ...) of the NETWORK_WAYS that can be set here: the children get all of them. The filter alone
    leaves abstract Unix sockets, which are the network namespace's: a namespace of its own hides the
    machine's."""
    return tuple(name for name, way in NETWORK_WAYS.items()
                 if can(lambda way=way: (no_new_privileges(), way())))


def _mount(source, target, fstype, flags, data=None):
    encode = lambda s: None if s is None else os.fsencode(s)
    _check(_libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}")


def _mount_points():
    """[(mount point, file system type)] of this process's mount namespace, in the order they were mounted."""
    unescape = lambda s: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            found.append((unescape(fields[4]), fields[fields.index("-") + 1]))
    return found


def _read_only(path, writable=False):
    flags = os.statvfs(path).f_flag & KEPT_FLAGS
    _mount(None, path, None, MS_REMOUNT | MS_BIND | flags | (0 if writable else MS_RDONLY))


def private_mounts(workdir, shm_bytes):
    """Make this process's view of the file systems read-only, but `workdir` if given (nosuid, nodev) and a fresh
    /dev/shm of `shm_bytes`. Needs root; run before the user switch. Nothing of it reaches other processes:
    the namespace is this process's (and its children's), and its propagation is cut first."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for path, fstype in _mount_points():
        if fstype not in UNTOUCHED_TYPES and os.path.isdir(path):
            _read_only(path)
    if workdir is not None:
        _mount(workdir, workdir, None, MS_BIND)  # a mount of its own, so that it alone is made writable again
        _mount(None, workdir, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    if os.path.isdir("/dev/shm"):  # POSIX semaphores and shared memory (multiprocessing's locks) live there
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
               f"size={shm_bytes},nr_inodes=1024,mode=1777")
    os.chdir(os.getcwd())  # the working folder as now seen: else it stays on the read-only mount beneath


def remove_many(paths):
    """Delete `paths` (and what is below them) without following a link, a thousand to an rm: one rm each
    took 22 s for 20,000 files. Nothing may be moving them: their writers must be dead."""
    paths = [str(p) for p in paths]
    for start in range(0, len(paths), 1000):
        subprocess.run(["rm", "-rf", "--", *paths[start:start + 1000]], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


def can(apply):
    """Whether apply() succeeds in a child of this process (which then ends, taking whatever it set)."""
    pid = os.fork()
    if pid == 0:
        try:
            apply()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


# ---------------------------------------------------------------------------------------------
# System V IPC
# ---------------------------------------------------------------------------------------------

IPC_RMID = 0
IPC_KINDS = {"shm": lambda i: _libc.shmctl(i, IPC_RMID, None), "sem": lambda i: _libc.semctl(i, 0, IPC_RMID),
             "msg": lambda i: _libc.msgctl(i, IPC_RMID, None)}
ID_COLUMNS = {"shm": "shmid", "sem": "semid", "msg": "msqid"}


def ipc_objects(uid):
    """[(kind, id)] of the System V objects that `uid` owns or created, from /proc/sysvipc."""
    found = []
    for kind, id_column in ID_COLUMNS.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                header, *rows = [line.split() for line in f]
        except OSError:
            continue
        at = {name: i for i, name in enumerate(header)}
        for row in rows:
            if uid in (int(row[at["uid"]]), int(row[at["cuid"]])):
                found.append((kind, int(row[at[id_column]])))
    return found


def remove_ipc(uid, gid):
    """Remove the System V objects of `uid`, as that user: their creator or owner may always remove them,
    where root may not without CAP_SYS_ADMIN (a container's root). [(kind, id)] of those left."""
    if ipc_objects(uid):
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                for kind, ident in ipc_objects(uid):
                    IPC_KINDS[kind](ident)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    return ipc_objects(uid)
