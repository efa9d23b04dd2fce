"""How a grading runs: one dataclass for the command line, grade, batch and the tests, and its flags."""
import argparse
from dataclasses import dataclass
from pathlib import Path

from course.settings import FIGURE_TESTS, GRADED_ITER, LIMITS, POINTS


@dataclass(frozen=True)
class Options:
    iter_max: int = GRADED_ITER  # training iterations
    data_dir: str = None  # MNIST; None: data/ beside course/
    threads: int = None  # CPU threads for the student's code; None: every usable CPU
    check_seconds: float = LIMITS.check_seconds
    train_seconds: float = LIMITS.train_seconds
    memory_gb: float = LIMITS.memory_gb
    only: tuple = ()  # the tests to run; (): all
    check_seed: int = None  # the seed of the checks' inputs; None: a new one (a regrade gives the old one)
    test_ranges: tuple = ()  # ((term, low, high), ...): ranges for short runs in tests, never for grading

    def wanted(self, name):
        """Whether the test `name` runs (--only)."""
        return not self.only or name in self.only


DEFAULTS = Options()  # every flag left at its default

def positive(kind):
    """An argparse type: `kind` of the text, which must be above 0."""
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value
    return parse


def _ranges(text):
    """--test-ranges nelbo=100:400,kl=0:50."""
    ranges = []
    for part in text.split(","):
        term, _, span = part.partition("=")
        low, _, high = span.partition(":")
        if term not in FIGURE_TESTS.values():
            raise argparse.ArgumentTypeError(f"unknown figure {term!r}")
        ranges.append((term, float(low), float(high)))
    return tuple(ranges)


# {Options field: (flag, argparse arguments)}: the one place the grading flags are written.
FLAGS = {
    "iter_max": ("--iter_max", dict(type=positive(int), help="training iterations")),
    "data_dir": ("--data-dir", dict(help="MNIST (default: data/ beside course/)")),
    "threads": ("--threads", dict(type=positive(int), help="CPU threads for training (default: every usable CPU)")),
    "check_seconds": ("--check-timeout", dict(type=positive(float), help="seconds for each check of the probe")),
    "train_seconds": ("--train-timeout", dict(type=positive(float), help="seconds for the training run")),
    "memory_gb": ("--memory-gb", dict(type=positive(float), help="address-space cap of each child, in GB")),
    "only": ("--only", dict(action="append", choices=list(POINTS), metavar="TEST",
                            help="run only this test (repeatable); the others are left out of the results")),
    "check_seed": ("--check-seed", dict(type=int, help="the checks' inputs of an earlier grading (its results.json "
                                                       "has it as extra_data.check_seed); default: new ones")),
    "test_ranges": ("--test-ranges", dict(type=_ranges, help=argparse.SUPPRESS)),
}


def add_option_flags(parser):
    for name, (flag, kwargs) in FLAGS.items():
        default = getattr(DEFAULTS, name)
        help_text = kwargs.get("help")
        if help_text and help_text != argparse.SUPPRESS and default not in (None, ()):
            kwargs = {**kwargs, "help": f"{help_text} (default: {default:g})"}
        parser.add_argument(flag, dest=name, default=None if name == "only" else default, **kwargs)


def options_of(args):
    return Options(**{name: (tuple(getattr(args, name) or ()) if name == "only" else getattr(args, name))
                      for name in FLAGS})


def option_argv(options):
    """The flags that give `options` again, for a child grader (batch)."""
    argv = []
    for name, (flag, _) in FLAGS.items():
        value = getattr(options, name)
        if value in (None, ()) or value == getattr(DEFAULTS, name):
            continue
        if name == "only":
            argv += [a for test in value for a in (flag, test)]
        elif name == "test_ranges":
            argv += [flag, ",".join(f"{t}={lo}:{hi}" for t, lo, hi in value)]
        else:
            argv += [flag, str(Path(value).resolve()) if name == "data_dir" else str(value)]
    return argv
