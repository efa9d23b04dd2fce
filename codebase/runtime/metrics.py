"""logs/<run>/metrics.csv, written as training goes and read again on resume; the progress bar; the
training curve. Reading needs no torch, so that tools without it can read a run's curve."""
import io
import sys
from pathlib import Path

from codebase.runtime.errors import UserError
from codebase.runtime.files import save_error, write_atomic

METRICS_COLUMNS = ("iteration", "nelbo", "kl", "rec")
# A KL estimated from one draw per image can dip below 0 by chance, but a row averages 50 batches of 100
# images: a correct bound's rows never went below 3 nats (the model answer's training, 5 seeds).
KL_FLOOR = -1.0


class NonFiniteLoss(UserError):
    """The loss became nan or inf at `iteration`; the message gives it and the checkpoints that exist."""

    def __init__(self, message, iteration):
        super().__init__(message)
        self.iteration = iteration


class ImpossibleFigures(NonFiniteLoss):
    """A metrics row at `iteration` that no bound gives (NELBO <= 0, KL well below 0, Rec < 0)."""


def read_metrics(path):
    """The rows of a metrics.csv, [{"iteration": int, "nelbo", "kl", "rec": float}], and the numbers of its
    lines that are not such a row (a row cut off by a crash), the header excluded."""
    rows, dropped = [], []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines()[1:], start=2):
        try:
            iteration, nelbo, kl, rec = line.split(",")
            rows.append({"iteration": int(iteration), "nelbo": float(nelbo), "kl": float(kl), "rec": float(rec)})
        except ValueError:
            dropped.append(number)
    return rows, dropped


class MetricsLog:
    """metrics.csv: a row appended every config.log_every steps, their mean. On resume only the rows up to the
    checkpoint's iteration stay, so that the file describes the run that goes on."""

    def __init__(self, config, start, device, log=print):
        import torch

        # The loss is checked at each step on the CPU; on a GPU, where a check waits for the device, once a row.
        self.config, self.every_step = config, device.type == "cpu"
        self.path = Path(config.log_dir) / "metrics.csv"
        rows = []
        if start and self.path.exists():
            rows, dropped = read_metrics(self.path)
            rows = [r for r in rows if r["iteration"] <= start]
            if dropped:
                log(f"{self.path}: kept {len(rows)} rows up to iteration {start}; dropped line(s) "
                    f"{', '.join(map(str, dropped))}, which are not rows of numbers.")
        kept = [self.row(r["iteration"], [r[c] for c in METRICS_COLUMNS[1:]]) for r in rows]
        write_atomic(self.path, "".join([",".join(METRICS_COLUMNS) + "\n", *kept]).encode())
        self.file = open(self.path, "a")
        self.window = torch.zeros(config.log_every, 3, device=device)  # the steps since the last row
        self.window_start = start

    @staticmethod
    def row(iteration, values):
        return ",".join([str(iteration), *(f"{v:.4f}" for v in values)]) + "\n"

    def add(self, iteration, stats, last=False):
        """Record a step's stats, tensor: (3,): (nelbo, kl, rec); every config.log_every steps, and at the
        last, append their mean and return it (else None). Raises NonFiniteLoss at a nan or inf."""
        import torch

        steps = iteration - self.window_start
        self.window[steps - 1].copy_(stats)
        if self.every_step and not torch.isfinite(stats).all():
            self._non_finite(iteration)
        if steps < self.config.log_every and not last:
            return None
        finite = torch.isfinite(self.window[:steps]).all(dim=1).tolist()
        if not all(finite):
            self._non_finite(self.window_start + finite.index(False) + 1)
        values = self.window[:steps].mean(dim=0).tolist()
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
            kept = (f"The newest checkpoint, {saved[max(saved)]} (iteration {max(saved)}), is the last good "
                    "state, and resuming from it would reach the same nan")
        else:
            kept = f"No checkpoint was written before it (the first is due at iteration {self.config.iter_save})"
        raise NonFiniteLoss(f"the loss became nan or inf at iteration {iteration}; training stopped there. {kept}: "
                            f"run python -m codebase.check to find the cause, then "
                            f"{self.config.command('--overwrite')}", iteration)

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
    """The training's tqdm bar on `stream` (stderr): live in a terminal, a line every 30 s into a log file."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    # miniters=1: the bar looks at the clock at each update. With tqdm's guess instead, its monitor thread
    # forces an extra line when the guess runs long: two lines at once in a log file.
    return tqdm(total=config.iter_max, initial=start, desc=config.run_name, dynamic_ncols=True, file=stream,
                mininterval=0.1 if stream.isatty() else 30, miniters=1)


def write_training_curve(path, rows, final, ranges):
    """The run's curves as a PNG: for each {label: (term, (low, high))} of `ranges`, metrics.csv's `rows` of
    that term (nats per image) against the iteration, its accepted range shaded, and `final[term]`, the
    run's figure on the test subset, marked."""
    from matplotlib.figure import Figure  # no pyplot: no display, no window

    fig = Figure(figsize=(12, 3.6), dpi=100)
    axes = fig.subplots(1, 3)
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
    write_atomic(path, buffer.getvalue())
