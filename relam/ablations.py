"""Ablations: the pipeline from keypoints onwards under changed settings, beside the profile's own results.

An ablation named ``name`` lives in ``results/<profile>/ablations/<name>/`` and has the profile's layout
(``subgoals/``, ``anticipation/``, ``runs/``, ``relabelled/``). It shares the profile's demos and offline datasets
(links ``demos`` and ``offline`` to them: collecting them again would cost the most and change nothing), and
redoes every stage the changed settings can affect: subgoal datasets, per-task anticipation models, PPO / IQL
runs. Every stage skips finished work, so an interrupted ablation resumes.

    cfg = load_config("cpu")
    abl = ablation_config(cfg, "kp-near-object", {"perception": {"keypoints": {"selection": "near-object"}}})
    run_ablation(abl, ppo_tasks=["drawer-open"], iql_tasks=["PushCube"], seeds=[0, 1])
    compare(cfg, ["kp-near-object"])          # success per task x method, profile vs ablation
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pandas as pd

from relam.config import Config


def _merge_dicts(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge_dicts(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


REUSABLE = ("subgoals", "anticipation")
# the settings that define each stage an ablation shares with its profile (demos and offline data always)
_PERCEPTION_SUBGOALS = ("segmenter", "segmenter_kwargs", "tracker", "tracker_kwargs", "keypoints", "keyframes")
_SUBGOALS = ("seed", "env.image_size", "demos", *(f"perception.{k}" for k in _PERCEPTION_SUBGOALS),
             # what build_subgoal_dataset reads of a task's own perception settings (x0 anchoring is RL-time only)
             "perception.task_overrides[subgoals]")
DEFINED_BY = {
    "demos": ("seed", "env.image_size", "demos"),
    "offline": ("seed", "env.image_size", "offline"),
    "subgoals": _SUBGOALS,
    "anticipation": _SUBGOALS + ("anticipation",),
}


def num_keypoints_overrides(k: int, cfg: Config | None = None) -> dict:
    """Overrides for the paper's K ablation (K ∈ {4, 8, 12}): the keypoints chosen per demo and the anticipation
    model's coordinate tokens change together (a model built for another K refuses the data, on purpose). With the
    profile's ``cfg``, tasks that have their own K (``perception.task_overrides``) get ``k`` as well, so the
    ablation has one K everywhere."""
    if int(k) != k or k < 2:
        raise ValueError(f"K={k!r}: the keypoint count must be an integer >= 2 (robot plus object keypoints)")
    k = int(k)
    out = {"perception": {"keypoints": {"num_keypoints": k}}, "anticipation": {"model": {"num_keypoints": k}}}
    own = [t for t, o in (cfg.perception.task_overrides if cfg else {}).items()
           if "num_keypoints" in o.get("keypoints", {})]
    if own:   # ablation_config merges these into the profile's task overrides, keeping their other settings
        out["perception"]["task_overrides"] = {t: {"keypoints": {"num_keypoints": k}} for t in own}
        out["anticipation"]["task_overrides"] = {t: {"model": {"num_keypoints": k}} for t in own}
    return out


def x0_anchor_everywhere(overrides: dict, cfg: Config) -> dict:
    """``overrides`` whose global ``perception.x0_anchor`` also replaces the profile's per-task ones. Why: an
    x^0-anchoring ablation asks how every task's plans fare under that mode, while a merged global setting would
    leave a task that sets its own (``cpu``: PickCube's 'residual') as it was. Other overrides are returned as given."""
    mode = overrides.get("perception", {}).get("x0_anchor")
    own = [t for t, o in cfg.perception.task_overrides.items() if "x0_anchor" in o]
    if mode is None or not own:
        return overrides
    mine = overrides["perception"].get("task_overrides", {})
    tasks = {t: {"x0_anchor": mode} | mine.get(t, {}) for t in own} | {t: o for t, o in mine.items() if t not in own}
    return {**overrides, "perception": {**overrides["perception"], "task_overrides": tasks}}


def ablation_config(cfg: Config, name: str, overrides: dict, reuse: tuple = ()) -> Config:
    """The profile's config with ``overrides`` and results in ``<cfg.out>/ablations/<name>``; links the profile's
    demos and offline datasets into it (they must exist: run stages 01 first), and the stages named in ``reuse``
    ('subgoals', 'anticipation') when the overrides do not change them: an ablation of how RL uses the plans
    (reward, x^0 anchoring) then plans with the profile's own models instead of training copies of them."""
    from relam.config import load_config

    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"ablation name {name!r}: use a plain directory name such as 'kp-near-object'")
    unknown = set(reuse) - set(REUSABLE)
    if unknown:
        raise ValueError(f"reuse={sorted(unknown)}: only the profile's {REUSABLE} can be reused")
    out = Path(cfg.out) / "ablations" / name
    base = cfg.to_dict()
    base.pop("profile", None)
    abl = load_config(cfg.profile, _merge_dicts(base, {**overrides, "results_dir": str(out)}))
    # a shared stage is a link to the profile's directory: a stage whose settings the overrides change would be
    # rebuilt THROUGH the link, over the profile's own results
    mine, theirs = cfg.to_dict(), abl.to_dict()
    for shared in ("demos", "offline", *reuse):
        changed = [key for key in DEFINED_BY[shared] if _setting(mine, key) != _setting(theirs, key)]
        if changed:
            fix = (f"drop {shared!r} from reuse" if shared in reuse else
                   "run it as its own profile (configs/<name>.yaml) instead")
            raise ValueError(f"ablation {name!r} changes {changed}, which define the profile's {shared!r} stage that "
                             f"it shares by a link; rebuilding it there would overwrite the profile's results: {fix}")
    out.mkdir(parents=True, exist_ok=True)
    for shared in ("demos", "offline", *reuse):
        src, link = Path(cfg.out) / shared, out / shared
        if not src.exists():
            stage = "01_collect_demos" if shared in ("demos", "offline") else \
                ("03_keyframes" if shared == "subgoals" else "04_anticipation")
            raise FileNotFoundError(f"{src} is missing: run notebooks/{stage}.ipynb for profile "
                                    f"{cfg.profile!r} before an ablation that reuses it")
        if not link.exists():
            try:
                os.symlink(os.path.relpath(src, out), link)
            except FileExistsError:   # runs of one ablation started at once: another process linked it first
                if link.resolve() != src.resolve():
                    raise
    return abl


def _setting(settings: dict, key: str):
    """A value of a config's ``to_dict()`` by dotted path ('env.image_size', 'perception');
    'perception.task_overrides[subgoals]': each task's overrides of the settings its subgoal dataset depends on."""
    if key == "perception.task_overrides[subgoals]":
        over = settings["perception"]["task_overrides"]
        kept = {t: {k: v for k, v in o.items() if k in _PERCEPTION_SUBGOALS} for t, o in over.items()}
        return {t: o for t, o in kept.items() if o}
    value = settings
    for part in key.split("."):
        value = value[part]
    return value


def run_ablation(cfg: Config, ppo_tasks=(), iql_tasks=(), methods=("relam", "relam-gt"), seeds=(0,),
                 progress: bool = True) -> pd.DataFrame:
    """Subgoal datasets and per-task anticipation models for the tasks asked for, then PPO (Meta-World) and IQL
    (ManiSkill) runs of ``methods`` x ``seeds``. Returns the ablation's finished runs (``relam.report.find_runs``)."""
    from dataclasses import replace

    from relam.models.train_anticipation import train
    from relam.perception.subgoals import SubgoalDataset, build_subgoal_dataset, subgoal_path
    from relam.report import find_runs
    from relam.rl import iql, ppo

    cfg = copy.copy(cfg)   # the grids below narrow its ppo / iql sections; the caller's config stays as given
    tasks = list(ppo_tasks) + list(iql_tasks)
    for t in tasks:
        build_subgoal_dataset(cfg, t, progress=progress)
    if "relam" in methods or "env-reward" in methods:
        for t in tasks:   # per-task models exactly as stage 04 trains them (same config, so same skip rule)
            train(cfg.out / "anticipation" / t, {t: SubgoalDataset.load(subgoal_path(cfg.out, t), t)},
                  cfg.anticipation.for_task(t), cfg.env.image_size, progress, cfg.torch_threads)
    if ppo_tasks:
        cfg.ppo = replace(cfg.ppo, tasks=list(ppo_tasks), methods=list(methods),
                          seeds=list(seeds))
        ppo.run_grid(cfg, progress=progress)
    if iql_tasks:
        cfg.iql = replace(cfg.iql, tasks=list(iql_tasks), methods=list(methods), seeds=list(seeds))
        iql.run_grid(cfg, progress=progress)
    return find_runs(cfg.out, cfg)


def compare(cfg: Config, names) -> pd.DataFrame:
    """Success % (simulator flag, each run's reported evaluation; mean over finished seeds, with the per-seed
    values) and last-subgoal % per task x method, for the profile's own runs and each named ablation.

    An ablation's row also gives its PAIRED difference from the profile: the mean over the seeds both have finished
    of (ablation - profile) success, in points, with a 95 % bootstrap interval over those seed pairs. Why: on a task
    whose outcome per seed is nearly a coin flip (door-open at the ``cpu`` budget: 0-100 % between seeds of one
    setting) two means over a few seeds differ by tens of points with no change at all; pairing by seed and the
    interval say how much of a difference the seeds support (README, stage 05)."""
    from relam.report import bootstrap_ci, find_runs

    profile, rows = {}, []   # (task, method) -> the profile's success per seed, for pairing
    for label, out in [("profile", Path(cfg.out))] + [(n, Path(cfg.out) / "ablations" / n) for n in names]:
        runs = find_runs(out) if (out / "runs").exists() else pd.DataFrame()
        if runs.empty:
            continue
        done = runs[runs["finished"].astype(bool)]
        for (task, method), g in done.groupby(["task", "method"]):
            seeds = dict(zip(g["seed"].astype(int), 100 * g["success"].astype(float)))
            if label == "profile":
                profile[task, method] = seeds
            row = {"settings": label, "task": task, "method": method, "seeds": len(g),
                   "success %": round(100 * g["success"].mean(), 1),
                   "per seed": [round(seeds[s]) for s in sorted(seeds)],
                   "last subgoal %": round(100 * g["last_subgoal"].mean(), 1)}
            base = profile.get((task, method), {}) if label != "profile" else {}
            both = sorted(set(seeds) & set(base))
            if both:
                diff = [seeds[s] - base[s] for s in both]
                lo, hi = bootstrap_ci(diff)
                row.update({"paired seeds": len(both), "paired diff": round(sum(diff) / len(diff), 1),
                            "diff 95 % CI": (round(lo, 1), round(hi, 1))})
            rows.append(row)
    return pd.DataFrame(rows, columns=["settings", "task", "method", "seeds", "success %", "per seed",
                                       "last subgoal %", "paired seeds", "paired diff", "diff 95 % CI"])
