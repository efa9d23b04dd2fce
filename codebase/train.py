"""Training: Adam over shuffled passes of MNIST, every batch binarised afresh. The training set sits on the
device as one tensor of gray levels, and each batch is taken from it by index. train() is the whole loop;
codebase/runtime/ holds what it calls: checkpoints, metrics.csv, Ctrl-C, the compiled and the graphed step."""
import time

import torch

from codebase.runtime import checkpoint, compiled
from codebase.runtime.cuda_graph import GraphedStep
from codebase.runtime.metrics import MetricsLog, progress_bar
from codebase.runtime.signals import StopRequest

# Seeds are 0 to MAX_SEED: epoch_order seeds with seed * 100_003 + epoch, and
# checkpoint.restore_stream with seed * 2**32 + iteration, both below torch's limit of 2**64.
MAX_SEED = 2**31 - 1


class StepFailed(Exception):
    """The model's code raised an error in training step `iteration` (the error is __cause__); the state
    before that step was saved in `saved` (None if this session had made no step yet)."""

    def __init__(self, iteration, saved):
        super().__init__(f"training step {iteration} failed")
        self.iteration, self.saved = iteration, saved


def make_optimizer(model, config, device):
    """Adam with the course's learning rate, in its fastest form for the device."""
    if device.type == "cpu":
        return torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    # capturable keeps Adam's step count on the GPU, where a CUDA graph's replay can advance it.
    return torch.optim.Adam(model.parameters(), lr=config.lr, foreach=True, capturable=graphed(config, device))


def graphed(config, device):
    return config.cuda_graph and device.type == "cuda"


def training_generator(config, device):
    """The generator of training's random draws: binarisation, and z ~ q(z|x)."""
    if graphed(config, device):  # a graph's draws must come from the device's default generator
        generator = torch.cuda.default_generators[device.index or torch.cuda.current_device()]
    else:
        generator = torch.Generator(device=device)
    return generator.manual_seed(config.seed)


def epoch_order(seed, epoch, n, device):
    """The shuffled order of pass `epoch`: it depends on (seed, epoch) alone, so that a resumed run
    finds its place in the pass from the iteration."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def binarised_bound(model):
    """bound(gray, generator) -> (nelbo, kl, rec), each tensor: (): the model's bound on a batch of gray
    levels, tensor: (batch, 784) in [0, 1], binarised afresh; generator None: torch's default."""

    def bound(gray, generator):
        # x ~ Bernoulli(gray), drawn as a comparison with one uniform: four times faster than torch.bernoulli.
        x = (torch.rand(gray.shape, generator=generator, device=gray.device) < gray).to(gray.dtype)
        return model.negative_elbo_bound(x, generator=generator)

    return bound


def make_step(model, optimizer, generator, bound=None):
    """step(gray) -> the batch's (nelbo, kl, rec) before the update, tensor: (3,): one Adam step on a batch of
    gray levels. bound: binarised_bound(model) (the default) or that compiled (runtime/compiled.py)."""
    bound = bound or binarised_bound(model)

    def step(gray):
        optimizer.zero_grad(set_to_none=True)
        nelbo, kl, rec = bound(gray, generator)
        nelbo.backward()
        optimizer.step()
        return torch.stack((nelbo, kl, rec)).detach()

    return step


def train(model, optimizer, data, config, device, generator, start=0, train_seconds=0.0, log=print, report=None):
    """Train from iteration `start` to config.iter_max, saving checkpoints on the way; return the seconds
    of training, `train_seconds` of the sessions before `start` included.

    Args:
        data: tensor: (n, 784): the training set's gray levels in [0, 1], on `device`
        optimizer, generator: from make_optimizer and training_generator
        report: dict or None: given, report["compile"] says how the step ran (--compile), and why

    Raises:
        Interrupted: on Ctrl-C, SIGTERM or SIGHUP, after saving a checkpoint
        NonFiniteLoss, ImpossibleFigures: a loss that is nan or inf, or figures that no bound gives
        StepFailed: the model's code raised an error, after saving the state before that step
        CompileFailed: with --compile on, where the step cannot be compiled
    """
    step = make_step(model, optimizer, generator)
    if graphed(config, device):
        step = GraphedStep(step, config.batch, data.size(1), device, log)
    compiling, why = compiled.choose(config.compile, device, config.iter_max - start, config.cuda_graph, log)
    if compiling:
        fast = make_step(model, optimizer, generator, compiled.compiled_bound(binarised_bound(model)))
        step = compiled.CompiledStep(step, fast, model, optimizer, generator, config.compile == "on", log, why)
    if report is not None:
        report["compile"] = step.report if compiling else {"path": "eager", "why": why, "compile_seconds": None}
    metrics = MetricsLog(config, start, device, log)
    began = time.perf_counter()

    def save(iteration):
        seconds = train_seconds + time.perf_counter() - began
        path = checkpoint.path_for(config.checkpoint_dir, iteration)
        checkpoint.save(path, checkpoint.training_state(model, optimizer, generator, config, iteration, seconds))
        return path

    batch, steps_per_epoch = config.batch, len(data) // config.batch
    try:
        with StopRequest() as stop, progress_bar(config, start) as bar:
            for it in range(start + 1, config.iter_max + 1):
                epoch, position = divmod(it - 1, steps_per_epoch)
                if position == 0 or it == start + 1:
                    order = epoch_order(config.seed, epoch, len(data), device)
                try:
                    stats = step(data[order[position * batch:(position + 1) * batch]])
                except compiled.CompileFailed:  # --compile on: the compiler's failure, not the student's
                    raise
                except Exception as e:  # the student's bound: keep the steps made so far
                    saved = save(it - 1) if it - 1 > start else None  # the update comes last: it - 1's weights
                    raise StepFailed(it, saved) from e
                stopping = stop.requested  # read once: a signal may come at any moment
                row = metrics.add(it, stats, last=it == config.iter_max or stopping)
                if row:  # refresh=False: the bar prints at its own pace (every 30 s into a log file)
                    bar.set_postfix(loss=f"{row[0]:.2f}", kl=f"{row[1]:.2f}", rec=f"{row[2]:.2f}", refresh=False)
                bar.update()
                if it % config.iter_save == 0 or it == config.iter_max or stopping:
                    path = save(it)
                if stopping:
                    stop.stop(it, path)
    finally:
        metrics.close()
    return train_seconds + time.perf_counter() - began


if __name__ == "__main__":  # python -m codebase.train would otherwise do nothing, silently
    raise SystemExit("codebase/train.py is a part of the run scripts, not a command: run python run_gmvae.py "
                     "(python run_gmvae.py --help lists its flags).")
