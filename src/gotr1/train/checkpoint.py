"""Checkpoints: everything a run needs to continue exactly, written atomically, last M kept.

A checkpoint is a folder ``checkpoint-<step>/`` in the run folder:

    model/                  the policy: a plain HF folder, or a PEFT adapter folder (+ processor)
    optimizer.safetensors   optimizer tensors (AdamW moments, step counts)
    optimizer.json          the rest of the optimizer state (param groups, hyper-parameters)
    scheduler.json          the learning-rate scheduler's state
    rng-<process>.json      Python, NumPy and torch (CPU, CUDA) RNG states of each process
    trainer_state.json      step, data position, world size, last metrics — written last

It is first written to ``.tmp-checkpoint-<step>`` and renamed when complete. Re-saving a step
moves the old folder to ``.tmp-checkpoint-<step>.old`` before the rename, so a kill between the
two renames leaves the step's complete copies under temporary names only: `checkpoints` (and with
it resume and cleaning) first gives such a complete copy its final name back
(`recover_checkpoints`), so a run killed at any moment never loses a complete checkpoint. A
folder is complete when it holds trainer_state.json; deletion removes that file first, so a
folder half deleted by a kill is never taken for a complete one. Only safetensors and JSON, no pickle (under
FSDP / DeepSpeed the sharded states are saved with accelerate's ``save_state`` in
``accelerate/`` instead).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gotr1.errors import UserError
from gotr1.policy.io import json_file_problem, model_folder_problem, safetensors_problem

if TYPE_CHECKING:
    from accelerate import Accelerator

    from gotr1.train.config import TrainConfig

PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
STATE_FILE = "trainer_state.json"
_PATTERN = re.compile(rf"^{PREFIX}(\d+)$")
_TMP_PATTERN = re.compile(rf"^{re.escape(TMP_PREFIX)}(\d+)(\.old)?$")


def recover_checkpoints(output_dir: str | Path) -> list[Path]:
    """Give complete checkpoints left under temporary names by a kill their final names.

    A kill while `save_checkpoint` re-saves a step, between moving the old folder aside
    (``.tmp-checkpoint-<step>.old``) and renaming the new one (``.tmp-checkpoint-<step>``), leaves
    no ``checkpoint-<step>``; the new copy (else the old one) becomes it when it holds
    trainer_state.json (written last). Steps that still have their final folder are left alone.
    Safe to call from several processes at once (a lost race is ignored). Returns what was
    recovered.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    candidates: dict[int, list[tuple[bool, Path]]] = {}
    for child in folder.iterdir():
        match = _TMP_PATTERN.match(child.name)
        if match and (child / STATE_FILE).is_file():
            is_old = match.group(2) is not None
            candidates.setdefault(int(match.group(1)), []).append((is_old, child))
    recovered = []
    for step, found in sorted(candidates.items()):
        final = folder / f"{PREFIX}{step}"
        if final.exists():
            continue
        for _, source in sorted(found):  # the new copy first, then the old one
            try:
                os.replace(source, final)
            except OSError:  # another process recovered it first, or it vanished meanwhile
                continue
            recovered.append(final)
            break
    return recovered


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first (after `recover_checkpoints`)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    recover_checkpoints(folder)
    found = []
    for child in folder.iterdir():
        match = _PATTERN.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    found = checkpoints(output_dir)
    return found[-1] if found else None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, naming the file (or folder) at fault; None
    when every file it needs is intact.

    Checks trainer_state.json (a JSON object with an integer step), the policy in ``model/``
    (`gotr1.policy.io.model_folder_problem`: its JSON files, whole safetensors files), the
    optimizer (optimizer.safetensors whole, optimizer.json with its state and param groups; any
    safetensors under ``accelerate/`` instead where accelerate saved the state), scheduler.json
    and every ``rng-<process>.json``. Only headers and JSON are read, no tensor.
    """
    path = Path(path)
    problem = json_file_problem(path / STATE_FILE)
    if problem:
        return problem
    step = json.loads((path / STATE_FILE).read_text(encoding="utf-8")).get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"{path / STATE_FILE}: no step count (step is {step!r}); the file is damaged"
    if not (path / "model").is_dir():
        return f"no model folder {path / 'model'}"
    problem = model_folder_problem(path / "model", require_config=False)
    if problem:
        return problem
    if (path / "accelerate").is_dir():
        for tensors in sorted((path / "accelerate").rglob("*.safetensors")):
            problem = safetensors_problem(tensors)
            if problem:
                return problem
    else:
        problem = safetensors_problem(path / "optimizer.safetensors") or json_file_problem(
            path / "optimizer.json"
        )
        if problem:
            return problem
        meta = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
        groups = meta.get("param_groups")
        if not isinstance(meta.get("state"), dict) or not isinstance(groups, list):
            return f"{path / 'optimizer.json'}: no state or param_groups; the file is damaged"
    for name in ["scheduler.json", *sorted(p.name for p in path.glob("rng-*.json"))]:
        problem = json_file_problem(path / name)
        if problem:
            return problem
    return None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_resume(
    output_dir: str | Path,
    resume: bool | str | Path | None,
    note: Callable[[str], None] | None = _stderr,
) -> Path | None:
    """The checkpoint to resume from: None (fresh run), the latest (``True``) or a given folder.

    Every candidate is checked first (`checkpoint_problem`). The latest: the newest intact
    checkpoint; when newer ones are damaged, `note` gets one line saying which and why. A given
    folder must be intact: a damaged one, or one without ``model/`` (never taken for a hub id),
    raises `UserError` naming the file at fault.
    """

    if not resume:
        return None
    if resume is True or str(resume) == "latest":
        found = checkpoints(output_dir)
        if not found:
            raise UserError(f"--resume: no complete checkpoint in {output_dir}")
        damaged: list[tuple[Path, str]] = []
        for path in reversed(found):
            problem = checkpoint_problem(path)
            if problem is None:
                if damaged and note is not None:
                    names = ", ".join(p.name for p, _ in damaged)
                    note(
                        f"--resume: skipping damaged {names} ({damaged[0][1]}); resuming from "
                        f"{path}, the newest intact checkpoint"
                    )
                return path
            damaged.append((path, problem))
        raise UserError(
            f"--resume: no intact checkpoint in {output_dir}; the newest, {damaged[0][0].name}, "
            f"is damaged: {damaged[0][1]}"
        )
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UserError(f"--resume: {path} is not a complete checkpoint (no {STATE_FILE})")
    problem = checkpoint_problem(path)
    if problem:
        raise UserError(f"--resume: {path} cannot be resumed from: {problem}")
    return path


# ----------------------------------------------------------------------------------------------
# Optimizer and RNG states as safetensors + JSON
# ----------------------------------------------------------------------------------------------


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Write an optimizer's state dict as optimizer.safetensors + optimizer.json."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        entry = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
                entry[key] = {"tensor": f"{index}.{key}"}
            else:
                entry[key] = {"value": value}
        meta["state"][str(index)] = entry
    save_file(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps(meta))


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Restore an optimizer written by `save_optimizer`."""
    tensors = load_file(str(folder / "optimizer.safetensors"))
    meta = json.loads((folder / "optimizer.json").read_text())
    state = {
        int(index): {
            key: tensors[item["tensor"]] if "tensor" in item else item["value"]
            for key, item in entry.items()
        }
        for index, entry in meta["state"].items()
    }
    groups = meta["param_groups"]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> dict[str, Any]:
    """This process's RNG states (Python, NumPy, torch CPU and CUDA) as JSON-ready data."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _listify(random.getstate()),
        "numpy": [
            numpy_state[0],
            numpy_state[1].tolist(),
            int(numpy_state[2]),
            int(numpy_state[3]),
            float(numpy_state[4]),
        ],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states from `rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _listify(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_listify(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    save_model: Callable[[Path], None],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
    accelerate_state: bool = False,
) -> Path:
    """Write ``checkpoint-<step>`` atomically and delete all but the newest `keep` checkpoints.

    Every process must call it. `save_model(folder)` is called on every process (it writes the
    policy from the main process, gathering shards first where parameters are sharded); `state`
    (step, data position, metrics...) goes into trainer_state.json. With `accelerate_state`
    (FSDP, DeepSpeed: partitioned optimizer states) the optimizer goes through accelerate's
    ``save_state`` instead of optimizer.safetensors.
    """
    output_dir = Path(output_dir)
    tmp = output_dir / f"{TMP_PREFIX}{step}"
    final = output_dir / f"{PREFIX}{step}"
    main = accelerator.is_main_process
    if main:
        _remove_checkpoint_folder(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_model(tmp / "model")
    if accelerate_state:
        accelerator.save_state(str(tmp / "accelerate"), safe_serialization=True)
    elif main:
        save_optimizer(optimizer, tmp)
    (tmp / f"rng-{accelerator.process_index}.json").write_text(json.dumps(rng_state()))
    accelerator.wait_for_everyone()
    if main:
        (tmp / "scheduler.json").write_text(json.dumps(_json_safe(scheduler.state_dict())))
        full_state = {**state, "step": step, "world_size": accelerator.num_processes}
        _write_json_synced(tmp / STATE_FILE, full_state)
        if final.exists():  # re-saving a step (e.g. the end of a resumed run): swap it out
            # A kill between the two renames leaves both complete copies under temporary names;
            # `recover_checkpoints` gives one of them the final name back.
            trash = output_dir / f"{TMP_PREFIX}{step}.old"
            _remove_checkpoint_folder(trash)
            os.replace(final, trash)
            os.replace(tmp, final)
            _remove_checkpoint_folder(trash)
        else:
            os.replace(tmp, final)
        for old in checkpoints(output_dir)[:-keep] if keep > 0 else []:
            _remove_checkpoint_folder(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator: Accelerator,
    path: str | Path,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerate_state: bool = False,
) -> dict[str, Any]:
    """Restore optimizer, scheduler and this process's RNG states; return trainer_state.json.

    (The model is loaded from ``path/model`` by the trainer before the optimizer is built.)
    """
    path = Path(path)
    state = _read_json(path / STATE_FILE)
    if accelerate_state:
        accelerator.load_state(str(path / "accelerate"))
    else:
        with _blame(path / "optimizer.safetensors", path / "optimizer.json"):
            load_optimizer(optimizer, path)
    scheduler_state = _read_json(path / "scheduler.json")
    with _blame(path / "scheduler.json"):
        scheduler.load_state_dict(scheduler_state)
    rng_file = path / f"rng-{accelerator.process_index}.json"
    if rng_file.is_file():
        rng = _read_json(rng_file)
        with _blame(rng_file):
            set_rng_state(rng)
    elif accelerator.is_main_process:
        print(f"note: {path} has no RNG state for process {accelerator.process_index}")
    return state


def _read_json(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON object; a missing, damaged or truncated file raises `UserError`
    naming it."""
    problem = json_file_problem(path)
    if problem:
        raise UserError(f"cannot resume: {problem}")
    return json.loads(path.read_text(encoding="utf-8"))


@contextlib.contextmanager
def _blame(*files: Path) -> Any:
    """Turn an error while restoring state from `files` into a one-line `UserError` naming them
    (the files parsed but do not hold what the optimizer, scheduler or RNG expects)."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
        names = " / ".join(str(f) for f in files)
        detail = str(error).splitlines()[0] if str(error) else ""
        raise UserError(
            f"cannot resume: {names} do not hold a usable state ({type(error).__name__}: {detail})"
        ) from None
    except Exception as error:  # safetensors' own SafetensorError: a damaged file
        if type(error).__name__ != "SafetensorError":
            raise
        raise UserError(f"cannot resume: {files[0]}: truncated or corrupt ({error})") from None


def clean_stale(output_dir: str | Path) -> None:
    """Remove half-written checkpoints left by a killed run, after giving complete ones left
    under temporary names their final names (`recover_checkpoints`)."""
    folder = Path(output_dir)
    if folder.is_dir():
        recover_checkpoints(folder)
        for child in folder.iterdir():
            if child.name.startswith(TMP_PREFIX):
                _remove_checkpoint_folder(child)


def _remove_checkpoint_folder(path: Path) -> None:
    """Delete a checkpoint folder, trainer_state.json first: a kill part-way through leaves a
    folder that is never taken for a complete checkpoint."""
    with contextlib.suppress(OSError):  # absent, or not a folder
        (path / STATE_FILE).unlink()
    shutil.rmtree(path, ignore_errors=True)


def _write_json_synced(path: Path, data: dict[str, Any]) -> None:
    with path.open("w") as handle:
        json.dump(data, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items() if not callable(v)}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return None


def prepare_output_dir(
    accelerator: Accelerator, config: TrainConfig, resume: bool | str | Path
) -> Path | None:
    """The checkpoint to resume from (or None); refuse to mix a fresh run into an old run folder."""
    out = Path(config.output_dir)
    resume_from = resolve_resume(out, resume, _stderr if accelerator.is_main_process else None)
    if resume_from is None and checkpoints(out):
        if not config.overwrite_output_dir:
            raise UserError(
                f"output_dir {out} already holds checkpoints: pass --resume to continue that run, "
                "--overwrite_output_dir true to start afresh, or choose another output_dir"
            )
        if accelerator.is_main_process:
            for old in checkpoints(out):
                shutil.rmtree(old)
            shutil.rmtree(out / "final", ignore_errors=True)
            shutil.rmtree(out / "samples", ignore_errors=True)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        clean_stale(out)
    accelerator.wait_for_everyone()
    return resume_from
