"""One child process of the student's code, watched: its output kept to its first and last few
kilobytes as it comes (Capture, Pipes), when it is stopped (Clock), and how it ended (Outcome).
"""
import os
import selectors
import signal
import time
from dataclasses import dataclass

from course.settings import LIMITS
from course.untrusted import shown

POLL_SECONDS = 0.5  # how often the child's progress and the user's limits are looked at
DRAIN_SECONDS = 2.0  # after the child ends: a process it left behind may hold the pipes open


class Capture:
    """A child's output stream, kept to its first and last LIMITS.keep_bytes."""

    def __init__(self):
        self.head, self.tail, self.total = bytearray(), bytearray(), 0

    def feed(self, data):
        self.total += len(data)
        room = LIMITS.keep_bytes - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail = (self.tail + data)[-LIMITS.keep_bytes:]

    def text(self):
        """What was kept, with a marker where bytes were left out."""
        head = self.head.decode("utf-8", errors="replace")
        if self.total <= len(self.head) + len(self.tail):
            return head + self.tail.decode("utf-8", errors="replace")
        left_out = self.total - len(self.head) - len(self.tail)
        return head + f"\n[... {left_out:,} bytes left out ...]\n" + self.tail.decode("utf-8", errors="replace")


class Pipes:
    """A child's output and error output, kept (Capture) as they come."""

    def __init__(self, proc):
        self.out, self.err = Capture(), Capture()
        self._captures = {proc.stdout.fileno(): self.out, proc.stderr.fileno(): self.err}
        self._selector = selectors.DefaultSelector()
        for fd in self._captures:
            self._selector.register(fd, selectors.EVENT_READ)

    @property
    def open(self):
        return bool(self._selector.get_map())

    def read(self, wait):
        """Keep what comes within `wait` s (or wait that long, once both pipes are closed)."""
        if not self.open:
            time.sleep(wait)
            return
        for key, _ in self._selector.select(timeout=wait):
            data = os.read(key.fd, 1 << 16)
            if data:
                self._captures[key.fd].feed(data)
            else:
                self._selector.unregister(key.fd)

    def close(self):
        self._selector.close()


class Clock:
    """When a child is stopped: `timeout` s after it began, or once `step` s pass without a new step of
    its progress (`startup` s before the first); and when to look at its progress and limits again."""

    def __init__(self, began, timeout, progress):
        self.count, self.step, startup = progress or (None, None, timeout)
        self.end, self.step_end = began + timeout, began + startup
        self.steps, self.next_look, self.last_step = 0, began, began

    def stalled(self, now):
        """Seconds since the child's last step (or its start), if it is stopped for want of one; else 0."""
        return now - self.last_step if self.step_end < self.end and now >= self.step_end else 0.0

    def look(self, now):
        """True once every POLL_SECONDS, when it also counts the child's steps."""
        if now < self.next_look:
            return False
        self.next_look = now + POLL_SECONDS
        done = self.count() if self.count else 0
        if done > self.steps:
            self.steps, self.step_end, self.last_step = done, now + self.step, now
        return True

    def over(self, now):
        return now >= min(self.end, self.step_end)

    def wait(self, now):
        """How long to wait for output before the next look."""
        return max(min(POLL_SECONDS, self.next_look - now, min(self.end, self.step_end) - now), 0.01)


@dataclass
class Outcome:
    """How a child ended, and what it printed."""
    returncode: int  # negative: killed by that signal
    timed_out: bool
    out: Capture
    err: Capture
    stopped: str = ""  # the limit it was stopped at (processes, disk), in words; "" if none
    seconds: float = 0.0
    stalled: float = 0.0  # timed out for want of progress: seconds since its last step (or start); else 0
    steps: int = 0  # how far it came: its progress's last count

    def why(self, memory_gb):
        """Why the child ended without finishing, in words."""
        if self.stopped:
            return f"stopped: {self.stopped}"
        last = [line for line in self.err.text().splitlines() if line.strip()]
        tail = f": {shown(last[-1].strip())[:300]}" if last else ""
        code = self.returncode
        if code == -signal.SIGKILL or "MemoryError" in tail or "can't allocate memory" in tail:
            return f"exit {code}{tail}; it may have run out of memory (the cap is {memory_gb:g} GB)"
        if code < 0:
            return f"killed by signal {-code}{tail}"
        return f"exit status {code}{tail}"
