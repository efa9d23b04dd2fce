"""Saving and loading training checkpoints, atomically and safely.

A checkpoint holds everything the next training step depends on, as tensors and
plain values, so that it loads with torch.load(weights_only=True): no pickled
object in it can run code.
"""
import io
import pickle
import re
import shutil
from pathlib import Path

import torch

from codebase.files import remove_stale_temporaries, write_atomic

FORMAT = 1
NAME = re.compile(r"model-(\d{5,})\.pt")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or from another configuration; the message says what to do."""


def path_for(folder, iteration):
    return Path(folder) / f"model-{iteration:05d}.pt"


def existing(folder):
    """{iteration: path} of the checkpoints in `folder`, oldest first."""
    found = {}
    for path in Path(folder).glob("model-*.pt"):
        match = NAME.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def prepare_folder(folder, resume, overwrite):
    """Make the run's checkpoint folder ready, never deleting checkpoints unasked."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    if existing(folder) and not resume:
        if not overwrite:
            raise CheckpointError(
                f"{folder} already holds checkpoints of this run. Add --resume to continue it, "
                "--overwrite to start it afresh (deleting them), or choose another --run.")
        shutil.rmtree(folder)
        folder.mkdir(parents=True)


def save(path, state):
    """Write a checkpoint atomically: the previous file under `path` survives any crash."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    write_atomic(path, buffer.getvalue())


def load(path, architecture, map_location):
    """Load and check a checkpoint.

    Args:
        path: Path: the file
        architecture: dict: what the checkpoint's config must match (model, z, k)
        map_location: torch.device: where to put its tensors (a GPU checkpoint loads on a CPU)

    Returns:
        state: dict: as saved by `save`
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}. Train this run first (--train 1).")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds pickled objects, not just weights; it was refused and nothing in it ran. "
            "Only load checkpoints written by this codebase.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is damaged or truncated ({str(e).splitlines()[0][:120]}). The file was left "
            "in place; remove it and resume from an earlier checkpoint, or retrain.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this codebase's format {FORMAT}; retrain.")
    if state["architecture"] != architecture:
        raise CheckpointError(
            f"{path} was trained with {state['architecture']}, but this run asks for {architecture}. "
            "Use the matching flags, or another --run.")
    return state
