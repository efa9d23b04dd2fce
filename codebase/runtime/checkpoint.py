"""Training checkpoints: tensors and plain values only, so that torch.load(weights_only=True) reads them and
no pickled object in one can run code; each written atomically."""
import io
import pickle
import re
from pathlib import Path

import torch

from codebase.runtime.errors import UserError, first_line
from codebase.runtime.files import write_atomic

FORMAT = 1
NAME = re.compile(r"model-(\d{5,})\.pt")  # checkpoints/<run>/model-<iteration>.pt
# A resumed run must keep these: each changes what training computes (--iter_max, --device, ... may change).
FIXED_ON_RESUME = ("model", "z", "k", "seed", "lr", "batch")


class CheckpointError(UserError):
    """A checkpoint is missing, damaged or from another configuration; the message says what to do."""


def path_for(folder, iteration):
    return Path(folder) / f"model-{iteration:05d}.pt"


def existing(folder):
    """{iteration: path} of the checkpoints in `folder`, by the iteration in their names, oldest first."""
    found = {int(m.group(1)): path for path in Path(folder).glob("model-*.pt") if (m := NAME.fullmatch(path.name))}
    return dict(sorted(found.items()))


def prepare_folder(folder, resume, overwrite):
    """Make the checkpoint folder; its checkpoints (model-*.pt, nothing else) are deleted only with `overwrite`."""
    Path(folder).mkdir(parents=True, exist_ok=True)
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


def load(path, architecture, map_location):
    """The checkpoint at `path`, checked: a dict as `save` wrote it.

    Args:
        architecture: dict: what its config must match (Config.architecture)
        map_location: torch.device: where its tensors go (a GPU's checkpoint loads on a CPU)
    """
    path = Path(path)
    if not path.is_file():
        found = ", ".join(map(str, existing(path.parent))) if path.parent.is_dir() else ""
        raise CheckpointError(f"no checkpoint at {path}; " + (f"this run has checkpoints at iterations {found}: "
                              "pass one of them as --iter_max." if found else "train this run first (--train 1)."))
    damaged = lambda why: CheckpointError(f"{path} is damaged or is not a checkpoint ({why}). The file was left in "
                                          "place; remove it and resume from an earlier checkpoint, or retrain.")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # not torch.save's zip: torch.load would call it "pickled objects"
            raise damaged("not a file torch.save writes")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} holds pickled objects, not just weights; it was refused and nothing in it "
                              "ran. Only load checkpoints written by this codebase.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # empty, truncated, or not torch.save's
        raise damaged(first_line(e)[:120]) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise damaged(f"not this codebase's format {FORMAT}")
    if state["architecture"] != architecture:
        raise CheckpointError(f"{path} was trained with {state['architecture']}, but this run asks for "
                              f"{architecture}. Use the matching flags, or another --run.")
    named = NAME.fullmatch(path.name)
    if named and int(named.group(1)) != state["iteration"]:  # resume trusts the name: a renamed file would mislead
        raise CheckpointError(f"{path} holds iteration {state['iteration']}, not {int(named.group(1))} as its "
                              f"name says; rename it to {path_for(path.parent, state['iteration']).name}.")
    return state


def load_model(model, path, architecture, device):
    """Load a checkpoint's weights into `model` (on `device`) and return the whole checkpoint."""
    state = load(path, architecture, device)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path} does not fit this model ({first_line(e)[:120]}); retrain.") from None
    return state


def changed_settings(saved_config, config):
    """The FIXED_ON_RESUME settings that `config` (a dict) changes against the checkpoint's, as 'key old -> new'."""
    return [f"{key} {saved_config.get(key)} -> {config.get(key)}" for key in FIXED_ON_RESUME
            if key in saved_config and saved_config[key] != config.get(key)]


def load_optimizer(optimizer, saved):
    """Load a saved Adam state_dict into `optimizer`, which keeps its own device's settings.

    A CPU run's Adam is fused, a GPU run's foreach (and capturable for a CUDA graph): the moments and step
    counts carry over, and torch puts each step count where this optimizer's settings want it.
    """
    groups = [{**group, **{flag: now[flag] for flag in ("foreach", "fused", "capturable") if flag in now}}
              for group, now in zip(saved["param_groups"], optimizer.param_groups)]
    state = {i: {k: v.cpu().float() if k == "step" and torch.is_tensor(v) else v for k, v in s.items()}
             for i, s in saved["state"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def training_state(model, optimizer, generator, config, iteration, train_seconds):
    """Everything the next training step depends on, as tensors and plain values."""
    return {"architecture": config.architecture, "config": config.as_dict(), "iteration": iteration,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": generator.get_state(),
            "device_type": generator.device.type, "train_seconds": train_seconds}


def restore_stream(generator, rng, made_on, device, seed, iteration):
    """Put the random stream where the checkpoint left it. A generator's state means nothing on another kind
    of device (`made_on` is the checkpoint's): there the stream restarts from (seed, iteration) instead.

    Returns:
        restored: bool: False if the stream restarted
    """
    if made_on == device.type:
        generator.set_state(rng.cpu())
        return True
    generator.manual_seed(seed * 2**32 + iteration)
    return False
