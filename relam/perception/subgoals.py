"""The subgoal dataset (SPEC §3): per demo, the first frame, the keyframe indices and the keypoint subgoals
x^0 ... x^M (K x 2 each, coordinates normalised by the image size; values outside [0, 1] allowed), plus one
task-indication frame per task (ours: the last frame of the task's first demo, i.e. the task done).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from relam.data.store import EpisodeSet, open_h5, read_attrs
from relam.io import atomic_path
from relam.perception.base import PerceptionError
from relam.perception.keyframes import KeyframeConfig, select_keyframes
from relam.perception.keypoints import (KeypointConfig, Keypoints, quotas, reference_selection,
                                        select_keypoints)


@dataclass
class DemoSubgoals:
    keypoints: Keypoints
    keyframes: np.ndarray     # (M+1,) frame indices, keyframes[0] == 0, keyframes[-1] == T-1
    subgoals: np.ndarray      # (M+1, K, 2) normalised

    @property
    def num_subgoals(self) -> int:
        return len(self.keyframes) - 1


def extract_demo(video: np.ndarray, masks: dict, tracker, suite: str, kp: KeypointConfig = KeypointConfig(),
                 kf: KeyframeConfig = KeyframeConfig(), task: str = "?",
                 reference: np.ndarray | None = None) -> DemoSubgoals:
    keypoints = select_keypoints(video, masks, tracker, kp, task=task, reference=reference)
    dmin, dmax = kf.gaps(suite)
    keys = select_keyframes(keypoints.tracks, dmin, dmax, kf.step, kf.motion_floor)
    size = video.shape[1]
    return DemoSubgoals(keypoints, keys, keypoints.tracks[keys] / size)


def demo_backends(pc, ds: EpisodeSet, i: int, prompts):
    """Segmenter and tracker for demo ``i``: the ``sim`` backends are bound to that demo's ground truth."""
    from relam.perception.base import make_segmenter, make_tracker
    from relam.perception.segmenters import SimSegmenter
    from relam.perception.trackers import SimTracker

    gt = ds.groundtruth(i) if "sim" in (pc.segmenter, pc.tracker) else None
    segmenter = SimSegmenter.from_groundtruth(gt, prompts) if pc.segmenter == "sim" \
        else make_segmenter(pc.segmenter, **pc.segmenter_kwargs)
    tracker = SimTracker.from_groundtruth(gt) if pc.tracker == "sim" else make_tracker(pc.tracker, **pc.tracker_kwargs)
    return segmenter, tracker


def extract_from_demo_set(pc, ds: EpisodeSet, i: int, spec, reference: np.ndarray | None = None) -> DemoSubgoals:
    """Keypoints, tracks and keyframes of demo ``i`` of a demo file, with the backends of ``pc`` (``reference``:
    ``select_keypoints``')."""
    video = ds[i].frames
    segmenter, tracker = demo_backends(pc, ds, i, spec.prompts)
    masks = segmenter(video[0], list(spec.prompts))
    return extract_demo(video, masks, tracker, spec.suite, pc.keypoints, pc.keyframes, spec.name, reference)


def subgoal_path(out: Path, task: str) -> Path:
    return Path(out) / "subgoals" / f"{task}.h5"


def build_subgoal_dataset(cfg, task: str, progress: bool = True, robot_reference: np.ndarray | None = None) -> dict:
    """Extract keypoints/keyframes from every demo of ``task`` with the configured backends; skip if done.
    ``robot_reference`` (with ``keypoints.robot_reference``): the robot's reference points to use instead of the
    medoid of these demos' own selections, e.g. the training demos' for unseen ones."""
    from relam.data.demos import demo_path
    from relam.envs import task_spec

    pc = cfg.perception.for_task(task)
    path = subgoal_path(cfg.out, task)
    settings = json.loads(json.dumps({"task": task, "segmenter": pc.segmenter, "tracker": pc.tracker,
                                      "keypoints": asdict(pc.keypoints), "keyframes": asdict(pc.keyframes),
                                      "n_demos": cfg.demos.for_task(task).n_demos}))
    if robot_reference is not None:
        if not pc.keypoints.robot_reference:
            raise ValueError(f"a robot reference was given for {task!r}, whose perception.keypoints.robot_reference "
                             "is off; switch it on or pass none")
        settings["robot_reference"] = np.round(np.asarray(robot_reference, float), 3).tolist()
    done = read_attrs(path)  # None if missing, incomplete or corrupt: rebuilt atomically below
    if done is not None and done.get("settings") == settings:
        return {"task": task, "path": str(path), "skipped": True, **done["summary"]}
    spec = task_spec(task)
    t0 = time.perf_counter()
    results, seeds = [], []
    with EpisodeSet(demo_path(cfg, task)) as ds:
        task_frame = ds[0].frames[-1]
        reference = None if robot_reference is None else np.asarray(robot_reference, float)
        for i in tqdm(range(len(ds)), desc=f"subgoals {task}", disable=not progress, unit="demo"):
            results.append(extract_from_demo_set(pc, ds, i, spec, reference))
            seeds.append(ds[i].seed)
        moved = None
        if pc.keypoints.robot_reference and reference is None:
            # the medoid of the demos' own robot points; only the demos that chose otherwise are extracted again
            n_robot = quotas(spec.prompts, pc.keypoints.num_keypoints, pc.keypoints.object_share)[0]
            reference = reference_selection(np.stack([r.keypoints.points[:n_robot] for r in results]))
            moved = [i for i, r in enumerate(results) if not np.allclose(r.keypoints.points[:n_robot], reference)]
            for i in tqdm(moved, desc=f"subgoals {task} (robot reference)", disable=not progress, unit="demo"):
                results[i] = extract_from_demo_set(pc, ds, i, spec, reference)
        first_frames = np.stack([ds.first_frame(i) for i in range(len(ds))])
    n_sub = np.array([r.num_subgoals for r in results])
    summary = {"demos": len(results), "subgoals_mean": float(n_sub.mean()), "subgoals_min": int(n_sub.min()),
               "subgoals_max": int(n_sub.max()), "seconds": round(time.perf_counter() - t0, 2)}
    if moved is not None:   # how many demos the medoid changed (the others chose it themselves)
        summary["robot_reference_changed"] = len(moved)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["settings"] = json.dumps(settings)
        f.attrs["summary"] = json.dumps(summary)
        f.attrs["prompts"] = json.dumps(list(spec.prompts))
        f.attrs["image_size"] = cfg.env.image_size
        f.attrs["num_keypoints"] = pc.keypoints.num_keypoints
        f.create_dataset("task_frame", data=task_frame)
        f.create_dataset("first_frames", data=first_frames, compression="gzip", compression_opts=1)
        f.create_dataset("keypoint_prompt", data=results[0].keypoints.prompt_index)
        if reference is not None:
            f.create_dataset("robot_reference", data=reference)
        for i, r in enumerate(results):
            g = f.create_group(f"demo_{i:05d}")
            g.attrs["seed"] = seeds[i]
            g.create_dataset("keyframes", data=r.keyframes)
            g.create_dataset("subgoals", data=r.subgoals.astype(np.float32))
            g.create_dataset("tracks", data=(r.keypoints.tracks / cfg.env.image_size).astype(np.float32))
        f.attrs["complete"] = True
    return {"task": task, "path": str(path), "skipped": False, **summary}


def robot_reference_of(path: Path | str) -> np.ndarray:
    """The robot's reference points (Q, 2) px of a subgoal dataset built with ``keypoints.robot_reference``."""
    hint = "rerun notebooks/03_keyframes.ipynb (or ./run_all.sh)"
    with open_h5(path, hint) as f:
        if "robot_reference" not in f:
            raise PerceptionError(f"{path} was built without perception.keypoints.robot_reference, which this "
                                  f"config sets; {hint} to rebuild it")
        return f["robot_reference"][()]


@dataclass
class SubgoalDataset:
    """In-memory subgoal dataset of one task (what the anticipation model trains on)."""
    task: str
    first_frames: np.ndarray          # (N, H, W, 3) uint8
    task_frame: np.ndarray            # (H, W, 3) uint8
    subgoals: list                    # N arrays (M_n + 1, K, 2), normalised
    keyframes: list                   # N arrays (M_n + 1,)
    tracks: list                      # N arrays (T_n, K, 2), normalised
    seeds: np.ndarray
    prompts: list
    num_keypoints: int
    settings: dict | None = None      # how the file was made (segmenter, tracker, keypoint/keyframe configs)
    keypoint_prompt: np.ndarray | None = None   # (K,) index into prompts of each keypoint (0 = robot)
    goals: np.ndarray | None = None   # (N, GOAL_DIM) each demo's task goal, attached for anticipation.model.goal_input
    robot_reference: np.ndarray | None = None   # (Q, 2) px: the robot's reference points (keypoints.robot_reference)

    @classmethod
    def load(cls, path: Path | str, task: str | None = None) -> "SubgoalDataset":
        hint = "rerun notebooks/03_keyframes.ipynb (or ./run_all.sh)"
        with open_h5(path, hint) as f:
            names = sorted(k for k in f.keys() if k.startswith("demo_"))
            if not names:
                raise PerceptionError(f"{path} holds no demos; {hint}")
            return cls(
                task=task or Path(path).stem,
                first_frames=f["first_frames"][()], task_frame=f["task_frame"][()],
                subgoals=[f[n]["subgoals"][()] for n in names], keyframes=[f[n]["keyframes"][()] for n in names],
                tracks=[f[n]["tracks"][()] for n in names], seeds=np.array([f[n].attrs["seed"] for n in names]),
                prompts=json.loads(f.attrs["prompts"]), num_keypoints=int(f.attrs["num_keypoints"]),
                settings=json.loads(f.attrs["settings"]) if "settings" in f.attrs else None,
                keypoint_prompt=f["keypoint_prompt"][()] if "keypoint_prompt" in f else None,
                robot_reference=f["robot_reference"][()] if "robot_reference" in f else None)


def x0_predictability(x0: np.ndarray, predictors: np.ndarray, image_size: int) -> np.ndarray:
    """How well each keypoint's x^0 can be told from the scene, across demos: leave-one-out mean error (px) of
    the best affine prediction of keypoint k's x^0 from ``predictors`` (per demo, e.g. the object keypoints'
    x^0, i.e. where the objects are). ``x0`` (N, K, 2) and ``predictors`` (N, P, 2) in normalised coordinates.

    The anticipation model has to predict x^0 from the first frame; a keypoint whose x^0 even an oracle that
    knows the object positions cannot predict (large value here) was chosen inconsistently across demos, and
    the model can only learn its average. Robot keypoints chosen by farthest point sampling were that (PushCube
    12-16 px, PickCube 9-28 px); see ``KeypointConfig.selection``."""
    x0, feats = np.asarray(x0, np.float64), np.asarray(predictors, np.float64).reshape(len(x0), -1)
    n = len(x0)
    if n < feats.shape[1] + 3:
        raise ValueError(f"need more demos ({n}) than predictor values + 2 ({feats.shape[1] + 2}) to fit and "
                         "hold one out")
    a = np.c_[feats, np.ones(n)]
    err = np.zeros((n, x0.shape[1]))
    for i in range(n):
        keep = np.arange(n) != i
        w, *_ = np.linalg.lstsq(a[keep], x0[keep].reshape(n - 1, -1), rcond=None)
        err[i] = np.linalg.norm((a[i] @ w).reshape(-1, 2) - x0[i], axis=-1)
    return err.mean(0) * image_size


def robot_keypoint_predictability(ds: SubgoalDataset, image_size: int) -> np.ndarray | None:
    """``x0_predictability`` of a subgoal dataset's robot keypoints from its object keypoints (px, one value per
    robot keypoint), or None when it has too few demos to fit and hold one out."""
    x0 = np.stack([s[0] for s in ds.subgoals])
    obj = np.asarray(ds.keypoint_prompt) > 0
    if len(x0) < 2 * obj.sum() + 3:
        return None
    return x0_predictability(x0, x0[:, obj], image_size)[~obj]
