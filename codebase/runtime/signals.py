"""Ctrl-C, SIGTERM (a cluster's time limit) and SIGHUP (a closed terminal) as a request to stop training
after the current step, once a checkpoint is saved."""
import signal
import threading

from codebase.runtime.errors import UserError

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # the shell's, for each signal
if hasattr(signal, "SIGHUP"):  # not on Windows
    EXIT_STATUS[signal.SIGHUP] = 129


class Interrupted(UserError):
    """Training stopped on a signal after saving a checkpoint."""
    prefix = ""


class StopRequest:
    """`with StopRequest() as stop:` turns the signals into stop.requested, and back afterwards."""

    def __enter__(self):
        self.signum, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():  # the only one that may set handlers
            for signum in EXIT_STATUS:
                self.previous[signum] = signal.signal(signum, self._request)
        return self

    def _request(self, signum, frame):
        self.signum = signum

    @property
    def requested(self):
        return self.signum is not None

    def stop(self, iteration, path):
        """Raise Interrupted, saying where the checkpoint of `iteration` was saved."""
        error = Interrupted(f"{signal.Signals(self.signum).name}: stopped after iteration {iteration}; checkpoint "
                            f"saved in {path}. Run the same command with --resume to continue.")
        error.exit_status = EXIT_STATUS[self.signum]
        raise error

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
