"""Checkpoints: written atomically, kept as `last` and `best`, restored exactly.

Layout under the run's output folder:

    checkpoints/
        step-00000300/          one checkpoint (a folder, complete or absent, never half written)
            model.safetensors   the model's state_dict (weights and buffers), loadable by any safetensors reader
            state.pt            optimizers, schedules, RNG states (torch, CUDA, numpy, python), the data position
                                (epoch, batch), step counters, early-stopping state, the metric history
            meta.json           human-readable: step, epoch, metrics, the spec's and config's hashes and texts
        last.json               {"step": 300, "dir": "step-00000300"}: the newest checkpoint
        best.json               the checkpoint with the best monitored metric
        last -> step-00000300   convenience symlinks (where the file system has them)
        best -> step-00000200

Atomicity: a checkpoint is written into a hidden temporary folder; every file is flushed and fsync'ed,
the folder is fsync'ed, then renamed into place (os.replace), the parent folder fsync'ed; only then is
`last.json` replaced (temp file + fsync + os.replace). A process killed at any instant leaves `last.json`
naming a complete checkpoint (the previous one until the new one is whole). Checkpoints other than
last and best are deleted after the pointers moved; stale temporary folders are removed.

`state.pt` holds only tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`: opening a checkpoint runs no pickled code.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

CHECKPOINTS = "checkpoints"


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. Windows): the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """temp file in the same folder + fsync + os.replace + fsync of the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------ RNG state


def rng_state() -> dict:
    """Every random number generator a training step can read, as plain tensors and lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------------------------------ writing


def _tensors_for_safetensors(state_dict: dict) -> dict:
    """CPU, contiguous, no two entries sharing memory (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for k, v in state_dict.items():
        t = v.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if key is not None and (key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
            t = t.clone()
        if key is not None:
            seen.add(key)
        out[k] = t
    return out


def _read_pointer(root: Path, name: str) -> dict | None:
    p = root / f"{name}.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not (root / str(data.get("dir", ""))).is_dir():
        return None
    return data


def _point(root: Path, name: str, dirname: str, step: int) -> None:
    write_bytes_atomic(root / f"{name}.json", json.dumps({"step": step, "dir": dirname}).encode())
    link = root / name
    tmp = root / f".{name}.{os.getpid()}.link"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(dirname, tmp)
        if link.exists() and not link.is_symlink():
            tmp.unlink()   # a real folder of that name is the user's: leave it
            return
        os.replace(tmp, link)
    except (OSError, NotImplementedError):
        if tmp.is_symlink():
            tmp.unlink()


def save_checkpoint(out_dir: Path, step: int, model_state: dict, state: dict, meta: dict, best: bool = False) -> Path:
    """Write checkpoint `step` atomically, point `last` (and `best` if asked) at it, drop the others."""
    from safetensors.torch import save_file
    root = Path(out_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file(_tensors_for_safetensors(model_state), str(tmp / "model.safetensors"),
                  metadata={"format": "pt", "step": str(step), "spec": str(meta.get("spec", ""))})
        _fsync_file(tmp / "model.safetensors")
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        final = root / name
        if final.exists():  # left by a run killed after the rename but before the pointer moved
            trash = root / f".old-{name}-{os.getpid()}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _point(root, "last", name, step)
    if best:
        _point(root, "best", name, step)
    _prune(root)
    return final


def _prune(root: Path) -> None:
    keep = {p["dir"] for p in (_read_pointer(root, "last"), _read_pointer(root, "best")) if p}
    for child in root.iterdir():
        if child.is_symlink():
            continue
        if child.is_dir() and child.name.startswith("step-") and child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)
        elif child.is_dir() and child.name.startswith((".tmp-", ".old-")) and \
                not child.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(child, ignore_errors=True)


# ------------------------------------------------------------------------------------------ reading


def find_checkpoint(path, which: str = "last") -> Path | None:
    """A checkpoint folder from a run folder, its checkpoints/ folder, or a checkpoint folder itself."""
    p = Path(path)
    if (p / "model.safetensors").is_file() and (p / "state.pt").is_file():
        return p
    for root in (p / CHECKPOINTS, p):
        ptr = _read_pointer(root, which)
        if ptr:
            return root / ptr["dir"]
    return None


def load_checkpoint(ckpt: Path, map_location="cpu") -> tuple[dict, dict, dict]:
    """(model state_dict, training state, meta) of a checkpoint folder."""
    from safetensors.torch import load_file
    ckpt = Path(ckpt)
    weights = load_file(str(ckpt / "model.safetensors"), device=str(map_location))
    state = torch.load(ckpt / "state.pt", map_location=map_location, weights_only=True)
    meta = json.loads((ckpt / "meta.json").read_text(encoding="utf-8"))
    return weights, state, meta


def describe_weight_mismatch(model_state: dict, ckpt_state: dict) -> list[str]:
    """What keeps the checkpoint's weights from loading into the model (names and shapes)."""
    rows = []
    for k in sorted(set(model_state) | set(ckpt_state)):
        if k not in ckpt_state:
            rows.append(f"{k}: in the model {list(model_state[k].shape)}, not in the checkpoint")
        elif k not in model_state:
            rows.append(f"{k}: in the checkpoint {list(ckpt_state[k].shape)}, not in the model")
        elif tuple(model_state[k].shape) != tuple(ckpt_state[k].shape):
            rows.append(f"{k}: {list(ckpt_state[k].shape)} in the checkpoint, {list(model_state[k].shape)} in the "
                        "model")
    return rows
