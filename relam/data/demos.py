"""Stage 1: action-free expert demo videos per task (SPEC §9), and the ManiSkill offline control
datasets (SPEC §7). Each task is one unit of work: written atomically, skipped on rerun when a complete
file with the same settings exists, re-collected (atomically) when the settings changed."""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from relam.config import Config
from relam.data.rollout import expert_policy, rollout
from relam.data.store import EpisodeWriter, read_attrs
from relam.envs import make_task, task_spec
from relam.io import without_options_off


class ExpertFailedError(RuntimeError):
    pass


def demo_path(cfg: Config, task: str) -> Path:
    return cfg.out / "demos" / f"{task}.h5"


def offline_path(cfg: Config, task: str) -> Path:
    return cfg.out / "offline" / f"{task}.h5"


def _demo_settings(cfg: Config, task: str) -> dict:
    spec, dc = task_spec(task), cfg.demos.for_task(task)
    return {"task": task, "image_size": cfg.env.image_size, "n_requested": dc.n_demos,
            "extra_frames_after_success": dc.extra_frames_after_success,
            "seed_offset": dc.seed_offset, "prompts": list(spec.prompts),
            "camera_spec": asdict(spec.camera), "show_goal": spec.show_goal}


def _up_to_date(path: Path, settings: dict) -> bool:
    attrs = read_attrs(path)
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as stored
    return attrs is not None and all(attrs.get(k) == v for k, v in settings.items())


def collect_demos(cfg: Config, task: str, progress: bool = True) -> dict:
    """Collect ``n_demos`` successful expert demos of ``task`` (``cfg.demos.for_task(task)``); returns a summary dict.
    Failed expert attempts are not stored; their count gives the expert's success rate."""
    path = demo_path(cfg, task)
    settings = _demo_settings(cfg, task)
    if _up_to_date(path, settings):
        a = read_attrs(path)
        return {"task": task, "path": str(path), "skipped": True, **_summary(a)}
    dc = cfg.demos.for_task(task)
    n, factor = dc.n_demos, dc.max_attempts_factor
    env = make_task(task, image_size=cfg.env.image_size)
    writer = EpisodeWriter(path, settings, control=False)
    attempts, failed, frames, ok = 0, [], 0, False
    t0 = time.perf_counter()
    try:
        with tqdm(total=n, desc=f"demos {task}", disable=not progress, unit="demo") as bar:
            while writer.count < n:
                if attempts >= max(int(n * factor), n + 5):
                    raise ExpertFailedError(
                        f"{task}: the scripted expert succeeded only {writer.count}/{attempts} times; "
                        "check the task/camera settings or raise demos.max_attempts_factor")
                seed = dc.seed_offset + attempts
                attempts += 1
                ep = rollout(env, seed, expert_policy, dc.extra_frames_after_success)
                if ep.succeeded:
                    writer.add(ep)
                    frames += ep.length
                    bar.update()
                else:
                    failed.append(seed)
        ok = True
    finally:
        seconds = time.perf_counter() - t0
        writer.close(ok, expert_attempts=attempts, expert_successes=attempts - len(failed),
                     failed_seeds=failed, frames=frames, seconds=seconds)
        env.close()
    return {"task": task, "path": str(path), "skipped": False, **_summary(read_attrs(path))}


def _summary(a: dict) -> dict:
    return {"demos": a["n_episodes"], "expert_success_rate": a["expert_successes"] / a["expert_attempts"],
            "frames": a["frames"], "seconds": round(a["seconds"], 1),
            "frames_per_s": round(a["frames"] / max(a["seconds"], 1e-9), 1)}


def collect_offline(cfg: Config, task: str, progress: bool = True) -> dict:
    """ManiSkill offline control dataset: ``n_expert`` expert + ``n_noisy`` noisy trajectories with
    actions, env rewards and success (SPEC §7). Every trajectory is kept, successful or not."""
    from relam.envs.maniskill_tasks import DEFAULT_NOISE, noisy_action

    off = cfg.offline
    path = offline_path(cfg, task)
    params = dataclasses.replace(DEFAULT_NOISE, **off.noise)
    noise = without_options_off(asdict(params), {("random_scale",): 1.0})   # added later: older datasets stay current
    settings = {**_demo_settings(cfg, task), "n_requested": off.n_expert + off.n_noisy,
                "n_expert": off.n_expert, "n_noisy": off.n_noisy, "seed_offset": off.seed_offset,
                "noise_params": noise}
    if _up_to_date(path, settings):
        return {"task": task, "path": str(path), "skipped": True, **_offline_summary(read_attrs(path))}
    env = make_task(task, image_size=cfg.env.image_size)
    writer = EpisodeWriter(path, settings, control=True)
    extra = cfg.demos.for_task(task).extra_frames_after_success   # resolved once, not per trajectory
    wins = {"expert": 0, "noisy": 0}
    ok = False
    t0 = time.perf_counter()
    try:
        kinds = ["expert"] * off.n_expert + ["noisy"] * off.n_noisy
        for i, kind in enumerate(tqdm(kinds, desc=f"offline {task}", disable=not progress, unit="traj")):
            seed = off.seed_offset + i
            if kind == "expert":
                policy = expert_policy
            else:
                rng, noise_state = np.random.default_rng(seed), {}  # per-trajectory (correlated) noise
                policy = lambda t, obs, step, rng=rng, st=noise_state: noisy_action(
                    t.expert_action(obs), rng, step, params, st)
            ep = rollout(env, seed, policy, extra)
            writer.add(ep, noisy=(kind == "noisy"))
            wins[kind] += ep.succeeded
        ok = True
    finally:
        writer.close(ok, expert_successes=wins["expert"], noisy_successes=wins["noisy"],
                     seconds=time.perf_counter() - t0)
        env.close()
    return {"task": task, "path": str(path), "skipped": False, **_offline_summary(read_attrs(path))}


def _offline_summary(a: dict) -> dict:
    return {"trajectories": a["n_episodes"],
            "expert_success_share": a["expert_successes"] / max(a["n_expert"], 1),
            "noisy_success_share": a["noisy_successes"] / max(a["n_noisy"], 1),
            "seconds": round(a["seconds"], 1)}


def object_motion_px(path: Path) -> dict:
    """Image motion (px) of the task object's reference point from frame 0 to the last frame of every
    demo, from the simulator ground truth. SPEC §5 asks for >= 3 delta (15.4 px at 128 px)."""
    from relam.data.store import EpisodeSet
    motions = []
    with EpisodeSet(path) as ds:
        for i in range(len(ds)):
            gt = ds.groundtruth(i)
            uv, _ = gt["camera"].project(gt["object_pos"][[0, -1]])
            motions.append(float(np.linalg.norm(uv[1] - uv[0])))
        size = ds.attrs["image_size"]
    m = np.asarray(motions)
    return {"median_px": float(np.median(m)), "min_px": float(m.min()), "max_px": float(m.max()),
            "threshold_px": 3 * 0.04 * size, "ok": bool(np.median(m) >= 3 * 0.04 * size)}
