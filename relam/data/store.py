"""HDF5 storage of episodes: written atomically, read with clear errors.

Each collection writes TWO files, so that what ReLAM may read is physically apart from ground truth:
- ``<name>.h5``      what the method reads: frames (+ actions, env rewards and success for control datasets)
- ``<name>.sim.h5``  simulator ground truth for the ``sim`` perception backends, oracles and evaluation:
                     per-frame body poses and privileged state, object positions, frame-0 depth,
                     segmentation (body slots) and prompt masks, the camera.
Both are written to temporary names and renamed only when complete (the ``.sim.h5`` first, so an
existing ``<name>.h5`` always has its ground truth beside it). A file without ``complete=True`` or one
that h5py cannot open is reported as truncated/corrupt with the command that rebuilds it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from relam.data.rollout import Episode
from relam.envs.camera import CameraParams

FORMAT_VERSION = 1


class DatasetFileError(RuntimeError):
    pass


def sim_path(path: Path | str) -> Path:
    path = Path(path)
    return path.with_name(path.name[:-3] + ".sim.h5")


def open_h5(path: Path | str, rebuild_hint: str = "rerun notebooks/01_collect_demos.ipynb (or ./run_all.sh)") -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise DatasetFileError(f"{path} does not exist; {rebuild_hint} to create it")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetFileError(f"{path} is truncated or corrupt ({e}); delete it and {rebuild_hint}") from None
    if not f.attrs.get("complete", False):
        f.close()
        raise DatasetFileError(f"{path} was not completely written; delete it and {rebuild_hint}")
    return f


class EpisodeWriter:
    """Streams episodes into the two files; ``close(ok=True)`` finalises and renames them."""

    def __init__(self, path: Path | str, attrs: dict, control: bool):
        self.path, self.control, self.count = Path(path), control, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The .sim.h5 comes first: it is renamed first, so a final <name>.h5 always has its ground truth.
        self._final = [sim_path(self.path), self.path]
        self._tmp = [p.with_name(f".{p.name}.partial-{os.getpid()}") for p in self._final]
        self.sim = h5py.File(self._tmp[0], "w")
        self.main = h5py.File(self._tmp[1], "w")
        for f, kind in ((self.main, "episodes"), (self.sim, "sim-groundtruth")):
            f.attrs["format"] = f"relam-{kind}"
            f.attrs["format_version"] = FORMAT_VERSION
            for k, v in attrs.items():
                f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v

    def add(self, ep: Episode, **extra_attrs) -> None:
        name = f"ep_{self.count:05d}"
        g = self.main.create_group(name)
        # gzip-1 per frame: ~4x smaller than raw for rendered scenes at a small CPU cost.
        g.create_dataset("frames", data=ep.frames, chunks=(1,) + ep.frames.shape[1:],
                         compression="gzip", compression_opts=1)
        meta = dict(seed=ep.seed, length=ep.length, success=ep.succeeded, first_success=ep.first_success,
                    **extra_attrs)
        g.attrs.update(meta)
        s = self.sim.create_group(name)
        s.attrs.update(meta)
        for key, value in ep.groundtruth.items():
            if isinstance(value, CameraParams):
                s.attrs[key] = json.dumps(value.to_dict())
            else:
                s.create_dataset(key, data=value, compression="gzip" if value.ndim >= 2 else None)
        for key in ("actions", "rewards", "success"):
            (g if self.control else s).create_dataset(key, data=getattr(ep, key))
        self.count += 1

    def close(self, ok: bool, **final_attrs) -> None:
        for f in (self.main, self.sim):
            if ok:
                for k, v in final_attrs.items():
                    f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
                f.attrs["n_episodes"] = self.count
                f.attrs["complete"] = True
            f.close()
        for tmp, final in zip(self._tmp, self._final):
            if ok:
                os.replace(tmp, final)
            elif tmp.exists():
                tmp.unlink()


@dataclass
class EpisodeRecord:
    index: int
    seed: int
    length: int
    success: bool
    first_success: int
    frames: np.ndarray
    actions: np.ndarray | None = None
    rewards: np.ndarray | None = None
    step_success: np.ndarray | None = None


class EpisodeSet:
    """Read access to ``<name>.h5`` (what ReLAM reads). ``groundtruth(i)`` opens ``<name>.sim.h5``."""

    def __init__(self, path: Path | str, rebuild_hint: str | None = None):
        self.path = Path(path)
        self._hint = rebuild_hint or "rerun notebooks/01_collect_demos.ipynb (or ./run_all.sh)"
        self.file = open_h5(self.path, self._hint)
        self.attrs = {k: _decode(v) for k, v in self.file.attrs.items()}
        self.names = sorted(k for k in self.file.keys() if k.startswith("ep_"))
        if len(self.names) != self.attrs.get("n_episodes"):
            raise DatasetFileError(f"{self.path} holds {len(self.names)} episodes but says "
                                   f"{self.attrs.get('n_episodes')}; delete it and {self._hint}")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> EpisodeRecord:
        g = self.file[self.names[i]]
        a = g.attrs
        rec = EpisodeRecord(i, int(a["seed"]), int(a["length"]), bool(a["success"]), int(a["first_success"]),
                            g["frames"][()])
        if "actions" in g:
            rec.actions, rec.rewards, rec.step_success = g["actions"][()], g["rewards"][()], g["success"][()]
        return rec

    def first_frame(self, i: int) -> np.ndarray:
        return self.file[self.names[i]]["frames"][0]

    def groundtruth(self, i: int) -> dict:
        """Simulator ground truth of episode i (sim backends, oracles and evaluation only)."""
        with open_h5(sim_path(self.path), self._hint) as f:
            g = f[self.names[i]]
            out = {k: g[k][()] for k in g.keys()}
            out["camera"] = CameraParams.from_dict(json.loads(g.attrs["camera"]))
            return out

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _decode(v):
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v.item() if isinstance(v, np.generic) else v


def read_attrs(path: Path | str) -> dict | None:
    """Top-level attributes of a complete file, or None if it is missing/incomplete/corrupt."""
    try:
        with open_h5(path) as f:
            return {k: _decode(v) for k, v in f.attrs.items()}
    except DatasetFileError:
        return None
