"""Resumable training checkpoints: weights, optimizer, scheduler, RNG states, data position.

Written atomically (``supersam.runtime.io.torch_save``: temp file + ``os.replace``), so
an interrupted write leaves the previous good checkpoint in place. RNG states
are stored as tensors and plain lists so the file loads with
``torch.load(weights_only=True)``. Training randomness does not depend on them
(see :mod:`supersam.runtime.sampling`); they are restored for anything else
that draws from the global generators.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supersam.runtime.errors import CheckpointError
from supersam.runtime.io import load_torch, torch_save

log = logging.getLogger(__name__)

FORMAT = "supersam-train-state/1"


def checkpoint_path(out: str | Path) -> Path:
    """The resumable checkpoint of a run: ``out/checkpoints/last.pt``."""
    return Path(out) / "checkpoints" / "last.pt"


def rng_states() -> dict[str, Any]:
    """Global RNG states of torch (CPU and every CUDA device), numpy and Python."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`rng_states` (CUDA states restored when both sides have CUDA)."""
    torch.set_rng_state(states["torch"].cpu())
    n = states["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def save_training_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    iteration: int,
    data_position: dict[str, int],
    config: dict[str, Any],
    progress: dict[str, Any],
) -> Path:
    """Atomically write everything needed to continue after ``iteration`` completed steps.

    Args:
        model: the supernet (its state dict: official SAM layout under ``sam.``).
        data_position: epoch/offset of the next batch (see ``sampling.data_position``).
        config: the run's train and ``data.*`` settings, checked on resume.
        progress: run bookkeeping: loss curve, eval history, target, seconds, kWh.
    """
    state = {
        "format": FORMAT,
        "iteration": int(iteration),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_states(),
        "data_position": dict(data_position),
        "config": config,
        "progress": progress,
    }
    out = torch_save(state, path)
    log.debug("checkpoint at iteration %d -> %s", iteration, out)
    return out


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_state` (on CPU).

    Raises:
        CheckpointError: missing, unreadable or not a training checkpoint.
    """
    state = load_torch(
        path, "training checkpoint", "run without --resume to start fresh", "delete it and restart without --resume"
    )
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a supersam training checkpoint ({FORMAT}); point --out elsewhere")
    return state


# Identity keys added after checkpoints were written, per section, and the value a checkpoint
# without them had: a random-init pretraining checkpoint from before ``init_digest`` existed, or a
# training checkpoint from before ``train.warmup`` / ``train.augment``, is still resumable.
ADDED_LATER = {"pretrain": {"init_digest": ""}, "train": {"warmup": 0, "augment": False}}


def check_resumable(
    saved: dict[str, Any], current: dict[str, Any], fields: tuple[str, ...], path: Path, section: str = "train"
) -> None:
    """Refuse to resume when a trajectory-defining setting changed.

    Keys without a dot are fields of ``section`` (``train``, ``pretrain``); others
    carry their section (``data.root``). A key of ``ADDED_LATER[section]`` missing from
    ``saved`` has its value there.

    Raises:
        CheckpointError: naming the first differing ``section.field``.
    """
    added = ADDED_LATER.get(section, {})
    for name in fields:
        was = saved.get(name, added.get(name))
        if was != current.get(name):
            label = name if "." in name else f"{section}.{name}"
            raise CheckpointError(
                f"cannot resume from {path}: {label} was {was!r}, now {current.get(name)!r}; "
                "restore the setting or start fresh without --resume"
            )


def check_data_position(state: dict[str, Any], dataset_len: int, path: Path) -> None:
    """Refuse to resume when the training split changed size (the batches would differ).

    Raises:
        CheckpointError: naming both sizes and the fix.
    """
    n = state["data_position"].get("dataset_len")
    if n != dataset_len:
        raise CheckpointError(
            f"cannot resume from {path}: the training split had {n} images, now "
            f"{dataset_len}; restore the data settings or start fresh"
        )


def restore_training_state(
    path: str | Path,
    identity: dict[str, Any],
    fields: tuple[str, ...],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    dataset_len: int,
    section: str = "train",
) -> dict[str, Any]:
    """Load a :func:`save_training_state` checkpoint into a run after checking it may continue.

    Checks the trajectory-defining settings (:func:`check_resumable`) and the
    training split's size (:func:`check_data_position`), then restores the
    weights, optimizer, scheduler and global RNG states.

    Returns:
        the checkpoint dict (``iteration``, ``progress``, ...) for the caller's own bookkeeping.

    Raises:
        CheckpointError: missing/unreadable file, changed settings or training split.
    """
    path = Path(path)
    state = load_training_state(path)
    check_resumable(state["config"], identity, fields, path, section)
    check_data_position(state, dataset_len, path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_states(state["rng"])
    return state


def auto_resumable(
    out: str | Path,
    identity: dict[str, Any],
    fields: tuple[str, ...],
    dataset_len: int,
    iterations: int,
    section: str = "train",
) -> bool:
    """``--auto-resume`` (the DVC stages): whether ``out/checkpoints/last.pt`` exists, matches
    this run (:func:`check_resumable`, :func:`check_data_position`) and is unfinished
    (its iteration below ``iterations``).

    A missing, unreadable, finished or mismatched checkpoint means a fresh start, logged
    with the reason; ``--resume`` instead refuses a mismatch.
    """
    path = checkpoint_path(out)
    if not path.is_file():
        return False
    try:
        state = load_training_state(path)
        check_resumable(state["config"], identity, fields, path, section)
        check_data_position(state, dataset_len, path)
    except CheckpointError as exc:
        log.info("starting afresh, not resuming: %s", exc)
        return False
    if int(state["iteration"]) >= iterations:
        log.info("starting afresh: %s is of a finished run (iteration %d)", path, int(state["iteration"]))
        return False
    return True
