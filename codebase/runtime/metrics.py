"""logs/<run>/metrics.csv, written as training goes and read again on resume, and the progress bar.

Reading needs no torch, so that tools without it can read a run's curve: torch comes in with the
writer.
"""
import sys
from pathlib import Path

from codebase.runtime.errors import UserError
from codebase.runtime.files import save_error, write_atomic


class NonFiniteLoss(UserError):
    """The loss became nan or inf at `iteration`; the message gives it and the checkpoints that exist."""

    def __init__(self, message, iteration):
        super().__init__(message)
        self.iteration = iteration


class ImpossibleFigures(NonFiniteLoss):
    """A metrics row at `iteration` that no bound gives (NELBO <= 0, KL well below 0, Rec < 0)."""


# A KL estimated from one draw per image can dip below 0 by chance, but a row averages 50 batches of 100
# images: a correct bound's rows never went below 3 nats (the model answer's training, 5 seeds).
KL_FLOOR = -1.0


METRICS_COLUMNS = ("iteration", "nelbo", "kl", "rec")


def read_metrics(path):
    """The rows of a metrics.csv that parse, and the line numbers of those that do not.

    The file may have been edited by hand (a spreadsheet's byte-order mark, a comment,
    a renamed header, a row cut off mid-line): such lines are skipped, never fatal.
    A row counts when it holds an integer iteration and three numbers.

    Args:
        path: str or Path: the file; it must exist

    Returns:
        rows: list of dict: {"iteration": int, "nelbo": float, "kl": float, "rec": float}, in file order
        dropped: list of int: 1-based numbers of the non-blank lines skipped, the header excluded
    """
    rows, dropped = [], []
    text = Path(path).read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff")
    for number, line in enumerate(text.splitlines(), start=1):
        fields = [f.strip() for f in line.split(",")]
        if not line.strip() or (number == 1 and fields[0].lower() == "iteration"):
            continue
        try:
            if len(fields) != len(METRICS_COLUMNS) or not fields[0].isdigit():
                raise ValueError
            values = [float(f) for f in fields[1:]]
        except ValueError:
            dropped.append(number)
            continue
        rows.append(dict(zip(METRICS_COLUMNS, [int(fields[0]), *values])))
    return rows, dropped


class MetricsLog:
    """logs/<run>/metrics.csv: one row, the mean of config.log_every steps, appended as training goes.

    On resume, the rows up to the checkpoint's iteration that parse are kept and the rest dropped, so
    the file describes exactly the run that continues; a hand-edited file (a comment, a spreadsheet's
    byte-order mark, a cut-off row) loses only the lines that do not parse, and `log` names them.
    Each step's loss is checked as it comes, or, with every_step=False (on a GPU, where each check would
    wait for the device), once per row.
    """

    def __init__(self, config, start, device, log=print, every_step=True):
        self.config, self.every_step = config, every_step
        self.path = Path(config.log_dir) / "metrics.csv"
        rows = []
        if start and self.path.exists():
            try:
                rows, dropped = read_metrics(self.path)
            except OSError as e:
                rows, dropped = [], []
                log(f"{self.path}: could not be read ({e.strerror or e}); it starts afresh.")
            rows = [r for r in rows if r["iteration"] <= start]
            if dropped:
                log(f"{self.path}: kept {len(rows)} rows up to iteration {start}; dropped line(s) "
                    f"{', '.join(map(str, dropped))}, which are not rows of numbers.")
        kept = [",".join(METRICS_COLUMNS) + "\n"] + [self.row(r["iteration"], [r[c] for c in METRICS_COLUMNS[1:]])
                                                      for r in rows]
        write_atomic(self.path, "".join(kept).encode())  # a crash here keeps the old rows
        self.file = open(self.path, "a")
        import torch
        self.window = torch.zeros(config.log_every, 3, device=device)  # the steps since the last row
        self.window_start = start

    @staticmethod
    def row(iteration, values):
        return ",".join([str(iteration), *(f"{v:.4f}" for v in values)]) + "\n"

    def add(self, iteration, stats, last=False):
        """Record a step's (nelbo, kl, rec); every config.log_every steps, and at the last, append their mean.

        Returns:
            row: (nelbo, kl, rec) of the row appended, or None

        Raises:
            NonFiniteLoss: a step's loss is nan or inf
        """
        import torch
        steps = iteration - self.window_start
        self.window[steps - 1].copy_(stats)
        if self.every_step and not torch.isfinite(stats).all():
            self._non_finite(iteration)
        if steps < self.config.log_every and not last:
            return None
        rows = self.window[:steps]
        finite = torch.isfinite(rows).all(dim=1).tolist()
        if not all(finite):
            self._non_finite(self.window_start + finite.index(False) + 1)
        values = rows.mean(dim=0).tolist()
        self._possible(iteration, steps, *values)
        try:
            self.file.write(self.row(iteration, values))
            self.file.flush()  # a row a user can read while training goes on
        except OSError as e:
            raise save_error(self.path, e) from None
        self.window_start = iteration
        return values

    def _non_finite(self, iteration):
        from codebase.runtime import checkpoint
        saved = checkpoint.existing(self.config.checkpoint_dir)
        if saved:
            newest = max(saved)
            kept = (f"The newest checkpoint, {saved[newest]} (iteration {newest}), is the last good state, and "
                    "resuming from it would reach the same nan")
        else:
            kept = f"No checkpoint was written before it (the first is due at iteration {self.config.iter_save})"
        again = self.config.command("--overwrite")
        raise NonFiniteLoss(f"the loss became nan or inf at iteration {iteration}; training stopped there. {kept}: "
                            f"run python -m codebase.check to find the cause, then {again}", iteration)

    def _possible(self, iteration, steps, nelbo, kl, rec):
        wrong = [f"{name} {value:.2f}" for name, value, bad in (
            ("NELBO", nelbo, nelbo <= 0), ("KL", kl, kl < KL_FLOOR), ("Rec", rec, rec < 0)) if bad]
        if wrong:
            raise ImpossibleFigures(
                f"at iteration {iteration} the last {steps} steps averaged {', '.join(wrong)}: no "
                "negative ELBO gives that (Rec = -log p(x|z) >= 0, and the KL is >= 0 up to the noise of its "
                "estimate), so training stopped. Run python -m codebase.check to find the mistake, then "
                f"{self.config.command('--overwrite')}", iteration)

    def close(self):
        self.file.close()


def progress_bar(config, start, stream=None):
    """The training's tqdm bar: live in a terminal, a line every 30 s into a log file (a cluster job),
    none with the stream closed (2>&-), while training goes on."""
    from tqdm import tqdm
    stream = sys.stderr if stream is None else stream
    interval = 0.1 if stream is not None and stream.isatty() else 30
    # miniters=1: the bar looks at the clock on each update. tqdm's default guesses how many
    # updates fit in the interval, and its monitor thread then forces an extra line when the
    # guess runs long: two lines at once in a log file.
    return tqdm(total=config.iter_max, initial=start, desc=config.run_name, dynamic_ncols=True, file=stream,
                disable=stream is None, mininterval=interval, miniters=1)


def write_training_curve(path, rows, final, ranges):
    """The run's curves as a PNG: NELBO, KL and Rec (nats per image) against the iteration, each with its
    accepted range shaded and the run's final figures on the test subset marked.

    Args:
        path: Path: the PNG
        rows: list of dict: metrics.csv's rows (read_metrics)
        final: dict: the run's results, with nelbo, kl and rec on the subset
        ranges: dict: {label: (term, (low, high))}: each panel's title, its key in rows and final, and
            the accepted range of the graded setting
    """
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100)
    last = rows[-1]["iteration"] if rows else 1
    for ax, (label, (term, (low, high))) in zip(axes, ranges.items()):
        ax.plot([r["iteration"] for r in rows], [r[term] for r in rows], linewidth=1, label="training batches")
        ax.axhspan(low, high, color="tab:green", alpha=0.2, label="accepted (20,000 iterations)")
        ax.plot([last], [final[term]], "o", color="tab:red", label="final, test subset")
        ax.set(title=label, xlabel="training iteration", ylabel=f"{label} (nats per image)",
               ylim=(min(low, final[term]) - 2 * (high - low), max(high, final[term]) + 4 * (high - low)))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
