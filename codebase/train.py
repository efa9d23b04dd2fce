"""Training: Adam over shuffled passes of MNIST, every batch binarised afresh.

The whole training set lives on the training device as one tensor of gray levels
and batches are drawn from it by index, so no per-image Python runs in the loop.
On CUDA the whole step (binarisation, forward, backward, Adam) is captured once
in a CUDA graph and replayed, because at this model's size an eager step is
bound by kernel-launch overhead.
"""
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

from codebase import checkpoint
from codebase.files import METRICS_COLUMNS, AppendOnly, read_metrics, write_atomic

# Seeds are 0 to MAX_SEED: epoch_order seeds with seed * 100_003 + epoch, and
# restart_stream with seed * 2**32 + iteration, both below torch's limit of 2**64.
MAX_SEED = 2**31 - 1


class Interrupted(Exception):
    """Training stopped on Ctrl-C, SIGTERM or SIGHUP after saving a checkpoint."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class NonFiniteLoss(RuntimeError):
    """The loss became nan or inf; the message gives the iteration."""


def make_optimizer(model, config, device):
    if device.type == "cpu":
        # Measured on 2 cores: fused 3.8 ms per step, foreach 4.5, the per-tensor loop 4.4.
        return torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    # capturable keeps Adam's step count on the GPU, which CUDA-graph replay needs.
    return torch.optim.Adam(model.parameters(), lr=config.lr, foreach=True,
                            capturable=device.type == "cuda")


def training_generator(device, seed):
    """The generator of training's random draws (binarisation and z ~ q(z|x))."""
    if device.type == "cuda":
        # Draws inside a CUDA graph must come from the device's default generator,
        # which the graph registers and advances on every replay.
        generator = torch.cuda.default_generators[device.index or torch.cuda.current_device()]
    else:
        generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def restore_stream(generator, rng, made_on, device, seed, iteration):
    """Put a resumed run's random stream where the checkpoint left it, if this device can.

    A generator's state is device-specific (a CPU's Mersenne Twister against a GPU's
    Philox seed and offset), so on another kind of device the stream restarts from
    (seed, iteration) instead: still reproducible, but not the uninterrupted run's.

    Args:
        generator: torch.Generator: from training_generator, on `device`
        rng: tensor: the checkpoint's generator state (uint8)
        made_on: str or None: the device type the checkpoint was made on (None: not recorded)
        device: torch.device: where training continues
        seed, iteration: int: the run's seed and the checkpoint's iteration

    Returns:
        restored: bool: True if the exact stream goes on, False if it restarted
    """
    if made_on in (None, device.type):
        try:
            generator.set_state(rng.cpu())
            return True
        except RuntimeError:  # an unrecorded device that was not this one
            pass
    generator.manual_seed(seed * 2**32 + iteration)
    return False


def epoch_order(seed, epoch, n, device):
    """The shuffled order of pass `epoch`.

    It depends on (seed, epoch) alone, so a resumed run needs only the iteration
    to find its place in the pass.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def make_step(model, optimizer, generator):
    """One training step on a batch of gray levels: tensor: (batch, 784) in [0, 1].

    Returns stats: tensor: (3,): the batch's nelbo, kl and rec before the update.
    """

    def step(gray):
        # The same Bernoulli(gray) draw as torch.bernoulli, four times faster on a CPU.
        x = (torch.rand(gray.shape, generator=generator, device=gray.device) < gray).to(gray.dtype)
        optimizer.zero_grad(set_to_none=True)
        nelbo, kl, rec = model.negative_elbo_bound(x, generator=generator)
        nelbo.backward()
        optimizer.step()
        return torch.stack((nelbo, kl, rec)).detach()

    return step


class GraphedStep:
    """The training step captured in one CUDA graph and replayed.

    The first WARMUP steps run eagerly on a side stream (they are real training
    steps), which lets Adam create its state before the capture. If the capture
    fails, training goes on eagerly and says so.
    """

    WARMUP = 3

    def __init__(self, step, batch, width, device, log):
        self.step = step
        self.log = log
        self.gray = torch.zeros(batch, width, device=device)  # the graph's static input
        self.graph = None
        self.stats = None
        self.eager_steps = 0
        self.eager_only = False

    def __call__(self, data, idx):
        torch.index_select(data, 0, idx, out=self.gray)
        if self.eager_only:
            return self.step(self.gray)
        if self.eager_steps < self.WARMUP:
            self.eager_steps += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                stats = self.step(self.gray)
            torch.cuda.current_stream().wait_stream(side)
            return stats
        if self.graph is None:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.stats = self.step(self.gray)
                self.graph = graph
            except Exception as e:  # any capture failure: the eager step is still correct
                self.log(f"CUDA graph capture failed ({type(e).__name__}: {e}); training eagerly.")
                self.eager_only = True
                return self.step(self.gray)
        self.graph.replay()
        return self.stats


class StopRequest:
    """Turns Ctrl-C, SIGTERM and SIGHUP (a closed terminal) into a request to stop after the current step."""

    EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
    if hasattr(signal, "SIGHUP"):  # not on Windows
        EXIT_CODES[signal.SIGHUP] = 129

    def __enter__(self):
        self.signum = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.EXIT_CODES:
                self.previous[signum] = signal.signal(signum, self._request)
        return self

    def _request(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class MetricsLog:
    """logs/<run>/metrics.csv: one row per logging window, appended as training goes.

    On resume, the rows up to the checkpoint's iteration that parse are kept and the
    rest dropped, so the file describes exactly the run that continues; a hand-edited
    file (a comment, a spreadsheet's byte-order mark, a cut-off row) loses only the
    lines that do not parse, and `log` names them.
    """

    def __init__(self, path, start, log=print):
        self.path = Path(path)
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
        self.file = AppendOnly(self.path)

    @staticmethod
    def row(iteration, values):
        return ",".join([str(iteration), *(f"{v:.4f}" for v in values)]) + "\n"

    def append(self, iteration, values):
        self.file.append(self.row(iteration, values).encode())

    def close(self):
        self.file.close()


def checkpoint_state(model, optimizer, generator, config, iteration, train_seconds):
    return {
        "architecture": config.architecture,
        "config": config.as_dict(),
        "iteration": iteration,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": generator.get_state(),
        "device_type": generator.device.type,  # the rng state is only meaningful on this kind of device
        "train_seconds": train_seconds,
    }


def progress_bar(config, start, stream):
    """The training's tqdm bar on `stream`: live in a terminal, a line every 30 s into a log file
    (a cluster job), none with the stream closed (2>&-), while training goes on."""
    interval = 0.1 if stream is not None and stream.isatty() else 30
    # miniters=1: the bar looks at the clock on each update. tqdm's default guesses how many
    # updates fit in the interval, and its monitor thread then forces an extra line when the
    # guess runs long: two lines at once in a log file.
    return tqdm(total=config.iter_max, initial=start, desc=config.run_name, dynamic_ncols=True, file=stream,
                disable=stream is None, mininterval=interval, miniters=1)


def train(model, optimizer, data, config, device, generator, start=0, train_seconds=0.0, log=print):
    """Train from iteration `start` to config.iter_max, saving checkpoints on the way.

    Args:
        model: GMVAE or VAE, on `device`
        optimizer: torch.optim.Adam over the model's parameters
        data: tensor: (n, 784): training gray levels in [0, 1], on `device`
        config: Config
        device: torch.device: where training runs
        generator: torch.Generator: training's random draws (see training_generator)
        start: int: iterations already done (a resumed run)
        train_seconds: float: training time already spent before `start`
        log: callable: where messages go

    Returns:
        train_seconds: float: total training time, earlier sessions included

    Raises:
        Interrupted: on Ctrl-C, SIGTERM or SIGHUP, after saving a checkpoint
        NonFiniteLoss: if the loss stops being finite; no checkpoint is written
    """
    n, width = data.shape
    batch = config.batch
    steps_per_epoch = n // batch
    one_step = make_step(model, optimizer, generator)
    if device.type == "cuda":
        step = GraphedStep(one_step, batch, width, device, log)
    else:
        def step(data, idx):
            return one_step(data[idx])

    window = torch.zeros(config.log_every, 3, device=device)  # per-step stats since the last row
    window_start = start
    metrics = MetricsLog(config.log_dir / "metrics.csv", start, log)
    bar = progress_bar(config, start, sys.stderr)
    order, it = None, start
    began = time.perf_counter()

    def save():
        seconds = train_seconds + time.perf_counter() - began
        path = checkpoint.path_for(config.checkpoint_dir, it)
        checkpoint.save(path, checkpoint_state(model, optimizer, generator, config, it, seconds))
        return path

    try:
        with StopRequest() as stop:
            while it < config.iter_max:
                epoch, position = divmod(it, steps_per_epoch)
                if order is None or position == 0:
                    order = epoch_order(config.seed, epoch, n, device)
                window[it - window_start].copy_(step(data, order[position * batch:(position + 1) * batch]))
                it += 1
                bar.update(1)
                if it - window_start == config.log_every or it == config.iter_max or stop.signum:
                    rows = window[: it - window_start]
                    finite = torch.isfinite(rows).all(dim=1).tolist()
                    if not all(finite):
                        bad = window_start + finite.index(False) + 1
                        raise NonFiniteLoss(
                            f"the loss became nan or inf at iteration {bad}; training stopped and no "
                            f"checkpoint was written after it. The newest checkpoint in "
                            f"{config.checkpoint_dir} is the last good state.")
                    nelbo, kl, rec = rows.mean(dim=0).tolist()
                    metrics.append(it, (nelbo, kl, rec))
                    # refresh=False: the bar prints at its own pace (every 30 s into a log file).
                    bar.set_postfix(loss=f"{nelbo:.2f}", kl=f"{kl:.2f}", rec=f"{rec:.2f}", refresh=False)
                    window_start = it
                if it % config.iter_save == 0 or it == config.iter_max or stop.signum:
                    path = save()
                if stop.signum:
                    raise Interrupted(
                        f"{signal.Signals(stop.signum).name}: stopped after iteration {it}; checkpoint "
                        f"saved in {path}. Run the same command with --resume to continue.",
                        StopRequest.EXIT_CODES[stop.signum])
    finally:
        bar.close()
        metrics.close()
    return train_seconds + time.perf_counter() - began
