"""Saving and loading training checkpoints, atomically and safely.

A checkpoint holds everything the next training step depends on, as tensors and
plain values, so that it loads with torch.load(weights_only=True): no pickled
object in it can run code. It also records the device type it was made on,
because a random generator's state means nothing on another kind of device.
"""
import io
import pickle
import re
from pathlib import Path

import torch

from codebase.runtime.errors import UserError, first_line
from codebase.runtime.files import write_atomic

FORMAT = 1
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
CHECKPOINT_NAME = "model-{:05d}.pt"  # checkpoints/<run>/model-<iteration>.pt
NAME = re.compile(r"model-(\d{5,})\.pt")
# Settings a resumed run must share with its checkpoint: each changes what training computes.
# --iter_max, --iter_save, --device and --threads may change.
FIXED_ON_RESUME = ("model", "z", "k", "seed", "lr", "batch")
# Adam's settings that depend on the device, not on the run: the current optimizer's win.
DEVICE_FLAGS = ("foreach", "fused", "capturable")


class CheckpointError(UserError):
    """A checkpoint is missing, damaged or from another configuration; the message says what to do."""


def path_for(folder, iteration):
    return Path(folder) / CHECKPOINT_NAME.format(iteration)


def existing(folder):
    """{iteration: path} of the checkpoints in `folder`, by the iteration in their names, oldest first."""
    found = {}
    for path in Path(folder).glob("model-*.pt"):
        match = NAME.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def prepare_folder(folder, resume, overwrite):
    """Make the run's checkpoint folder ready, never deleting checkpoints unasked.

    With `overwrite`, the run's checkpoints (model-*.pt) are deleted and nothing else:
    notes or other files in the folder stay.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    found = existing(folder)
    if found and not resume:
        if not overwrite:
            raise CheckpointError(
                f"{folder} already holds checkpoints of this run. Add --resume to continue it, "
                "--overwrite to start it afresh (deleting them), or choose another --run.")
        for path in found.values():
            path.unlink()


def save(path, state):
    """Write a checkpoint atomically: the previous file under `path` survives any crash."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    write_atomic(path, buffer.getvalue())


def _missing(path):
    """The message for a path that holds no checkpoint, with the checkpoints that do exist."""
    found = existing(path.parent) if path.parent.is_dir() else {}
    if found:
        return (f"no checkpoint at {path}; this run has checkpoints at iterations "
                f"{', '.join(map(str, found))}: pass one of them as --iter_max.")
    return f"no checkpoint at {path}. Train this run first (--train 1)."


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
        raise CheckpointError(_missing(path))
    with open(path, "rb") as f:
        if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:  # else torch.load would call random bytes "pickled objects"
            raise CheckpointError(f"{path} is not a checkpoint (not a file torch.save writes). The file was "
                                  "left in place; remove it and resume from an earlier checkpoint, or retrain.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds pickled objects, not just weights; it was refused and nothing in it ran. "
            "Only load checkpoints written by this codebase.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # empty, truncated, or not torch.save's
        raise CheckpointError(
            f"{path} is damaged or not a checkpoint ({first_line(e)[:120]}). The file was left "
            "in place; remove it and resume from an earlier checkpoint, or retrain.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this codebase's format {FORMAT}; retrain.")
    if state["architecture"] != architecture:
        raise CheckpointError(
            f"{path} was trained with {state['architecture']}, but this run asks for {architecture}. "
            "Use the matching flags, or another --run.")
    named = NAME.fullmatch(path.name)
    if named and int(named.group(1)) != state["iteration"]:
        # Resume picks the newest file by name: a renamed file would send every resume back.
        raise CheckpointError(
            f"{path} holds iteration {state['iteration']}, not {int(named.group(1))} as its name says; "
            f"rename it to {path_for(path.parent, state['iteration']).name}.")
    return state


def load_model(model, path, architecture, device):
    """Load a checkpoint's weights into `model`, the one way every script does it.

    Args:
        model: GMVAE or VAE, on `device`, of the checkpoint's architecture
        path: Path: the checkpoint
        architecture: dict: what the checkpoint must match (Config.architecture)
        device: torch.device: where the model lives

    Returns:
        state: dict: the whole checkpoint (iteration, train_seconds, optimizer, ...)
    """
    state = load(path, architecture, device)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path} does not fit this model ({first_line(e)[:120]}); retrain.") from None
    return state


def changed_settings(saved_config, config):
    """The settings that a resume may not change and this one does, as 'name: saved -> now'.

    Args:
        saved_config: dict: the checkpoint's config
        config: dict: this run's config

    Returns:
        changes: list of str: empty when the run may resume
    """
    return [f"{key} {saved_config.get(key)} -> {config.get(key)}" for key in FIXED_ON_RESUME
            if key in saved_config and saved_config[key] != config.get(key)]


def load_optimizer(optimizer, saved):
    """Load a saved Adam state into `optimizer`, keeping this device's settings.

    A GPU run's Adam is capturable and keeps its step counts on the GPU; a CPU run's is
    fused. The per-parameter state (moments and step counts) carries over unchanged;
    `foreach`, `fused` and `capturable` stay as `optimizer` was built for this device,
    and torch then puts each step count where those settings want it.

    Args:
        optimizer: torch.optim.Adam: built by make_optimizer for the current device
        saved: dict: a state_dict() of an Adam over the same parameters
    """
    groups = [{**group, **{flag: now[flag] for flag in DEVICE_FLAGS if flag in now}}
              for group, now in zip(saved["param_groups"], optimizer.param_groups)]
    # A step count stays on the CPU unless the settings ask for it elsewhere.
    state = {i: {k: v.cpu().float() if k == "step" and torch.is_tensor(v) else v for k, v in s.items()}
             for i, s in saved["state"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def training_state(model, optimizer, generator, config, iteration, train_seconds):
    """Everything the next training step depends on, as tensors and plain values."""
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


def restore_stream(generator, rng, made_on, device, seed, iteration):
    """Put a resumed run's random stream where the checkpoint left it, if this device can.

    A generator's state is device-specific (a CPU's Mersenne Twister against a GPU's
    Philox seed and offset), so on another kind of device the stream restarts from
    (seed, iteration) instead: still reproducible, but not the uninterrupted run's.

    Args:
        generator: torch.Generator: training's, on `device`
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
