"""Ctrl-C, SIGTERM (a cluster's time limit) and SIGHUP (a closed terminal) as a request to stop training
after the current step, once a checkpoint is saved."""
import signal
import threading

from codebase.runtime.errors import UserError


class Interrupted(UserError):
    """Training stopped on a signal after saving a checkpoint; the exit status is the shell's for it."""
    prefix = ""

    def __init__(self, message, exit_status):
        super().__init__(message)
        self.exit_status = exit_status


class StopRequest:
    """`with StopRequest() as stop:` turns the signals into stop.requested, and back afterwards."""

    EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
    if hasattr(signal, "SIGHUP"):  # not on Windows
        EXIT_STATUS[signal.SIGHUP] = 129

    def __enter__(self):
        self.signum = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.EXIT_STATUS:
                self.previous[signum] = signal.signal(signum, self._request)
        return self

    def _request(self, signum, frame):
        self.signum = signum

    @property
    def requested(self):
        return self.signum is not None

    def stop(self, iteration, path):
        """Raise Interrupted, saying where the checkpoint of `iteration` was saved."""
        raise Interrupted(f"{signal.Signals(self.signum).name}: stopped after iteration {iteration}; checkpoint "
                          f"saved in {path}. Run the same command with --resume to continue.",
                          self.EXIT_STATUS[self.signum])

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
