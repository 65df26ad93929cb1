"""Collect RL run directories (``<results>/runs/<task>/<method>/seed<k>/``) into curves and tables.

A run counts as finished when it has ``results.json``; unfinished runs are listed, never averaged in silently.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd


def expected_config(cfg, task: str, method: str, seed: int) -> dict | None:
    """The config.json a run of ``task``/``method``/``seed`` would have under ``cfg`` (PPO for the profile's PPO
    tasks, IQL for its IQL tasks); None for anything else (e.g. a baseline this module does not know). When the
    anticipation model such a run needs has not finished, no saved run can match: a placeholder saying so."""
    if task in cfg.ppo.tasks:
        from relam.rl.ppo import run_config
    elif task in cfg.iql.tasks:
        from relam.rl.iql import run_config
    else:
        return None
    try:
        return run_config(cfg, task, method, seed)
    except FileNotFoundError as e:
        return {"unavailable": str(e)}


def find_runs(out: Path | str, cfg=None) -> pd.DataFrame:
    """One row per run directory: task, method, seed, finished, reported success / last-subgoal share (of the
    checkpoint selected on validation states where the run selects, ``ppo.validation_episodes`` /
    ``iql.validation_episodes``; else of the final model), the final model's success, the selected step, steps.
    With ``cfg``, a run whose config.json differs from what ``cfg`` asks for is marked ``stale`` and NOT finished
    (its numbers belong to other settings; rerunning the notebook redoes it)."""
    rows = []
    for rd in sorted(Path(out).glob("runs/*/*/seed*")):
        if not rd.is_dir():
            continue
        task, method, seed = rd.parent.parent.name, rd.parent.name, int(rd.name[4:])
        res = rd / "results.json"
        stale = False
        if cfg is not None and (rd / "config.json").exists():
            want = expected_config(cfg, task, method, seed)
            stale = want is not None and json.loads((rd / "config.json").read_text()) != json.loads(json.dumps(want))
        row = {"task": task, "method": method, "seed": seed, "finished": res.exists() and not stale, "stale": stale,
               "dir": str(rd)}
        if res.exists() and not stale:
            r = json.loads(res.read_text())
            row.update(success=r["success_rate"], last_subgoal=r["last_subgoal_rate"], steps=r["steps"],
                       final_success=r.get("final_eval", {}).get("success_rate", r["success_rate"]),
                       selected_step=r.get("selected_step", r["steps"]),
                       seconds=r.get("seconds_this_session"),
                       steps_per_second=r.get("steps_per_second", r.get("train_steps_per_second")))
            want = cfg.iql.reeval_episodes if cfg is not None and task in cfg.iql.tasks else None
            row.update(_reevaluation(rd, want))
        rows.append(row)
    return pd.DataFrame(rows, columns=["task", "method", "seed", "finished", "stale", "success", "last_subgoal",
                                       "final_success", "selected_step", "steps", "seconds", "steps_per_second",
                                       "reeval_success", "reeval_episodes", "dir"])


def _reevaluation(run_dir: Path, episodes: int | None) -> dict:
    """The run's re-evaluation on more states (``relam.rl.iql.reevaluate_run``'s ``reeval<N>.json``) if one was
    made of its CURRENT results (``reeval_key``: a retrained run's old file is ignored): N = ``episodes`` (the
    profile's ``iql.reeval_episodes``; 0 or None without a profile: the largest N found)."""
    from relam.rl.iql import reeval_key

    found = {}
    for path in run_dir.glob("reeval*.json"):
        try:
            r = json.loads(path.read_text())
            n = int(r["key"]["episodes"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if r["key"] == reeval_key(run_dir / "results.json", n) and "success_rate" in r:
            found[n] = r["success_rate"]
    n = episodes if episodes else max(found, default=None)
    return {"reeval_success": found[n], "reeval_episodes": n} if n in found else {}


def eval_curves(out: Path | str, cfg=None) -> pd.DataFrame:
    """All evaluation rows of all runs (finished or not), with task / method / seed columns; with ``cfg``, runs
    made under other settings (stale, see ``find_runs``) are left out."""
    frames = []
    stale = set()
    if cfg is not None:
        runs = find_runs(out, cfg)
        stale = set(runs.loc[runs["stale"].astype(bool), "dir"])
    for csv in sorted(Path(out).glob("runs/*/*/seed*/eval.csv")):
        rd = csv.parent
        if str(rd) in stale:
            continue
        df = pd.read_csv(csv)
        df["task"], df["method"], df["seed"] = rd.parent.parent.name, rd.parent.name, int(rd.name[4:])
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["step", "success_rate", "last_subgoal_rate", "task", "method", "seed"])


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task x method over FINISHED runs: mean success and last-subgoal share, seeds, wall-clock per run."""
    done = runs[runs["finished"]]
    if done.empty:
        return pd.DataFrame()
    g = done.groupby(["task", "method"])
    table = pd.DataFrame({
        "success %": 100 * g["success"].mean(), "success sd": 100 * g["success"].std(ddof=0),
        "last subgoal %": 100 * g["last_subgoal"].mean(), "final model success %": 100 * g["final_success"].mean(),
        "seeds": g["seed"].count(),
        "steps": g["steps"].max(), "min / run": g["seconds"].mean() / 60, "steps/s": g["steps_per_second"].mean()})
    unfinished = runs[~runs["finished"]].groupby(["task", "method"])["seed"].apply(list)
    table["unfinished seeds"] = [unfinished.get(k, []) for k in table.index]
    return table.round(1)


# --- Table 4 --------------------------------------------------------------------------------------------------

TABLE4_TASKS = ["drawer-open", "door-open", "button-press-wall", "PushCube", "PickCube"]
"""Rows of the paper's Table 4, in its order."""
TABLE4_LABELS = {"drawer-open": "Drawer Open (MW, PPO)", "door-open": "Door Open (MW, PPO)",
                 "button-press-wall": "Button Press Wall (MW, PPO)", "PushCube": "Push Cube (MS, IQL)",
                 "PickCube": "Pick Cube (MS, IQL)"}
PAPER_TABLE4 = {  # paper Table 4 (SPEC §10): mean success %, last evaluation
    "drawer-open": {"Diffusion Reward": 80.0, "DACfO": 71.3, "IS": 4.0, "Oracle": 93.3, "ReLAM": 100.0},
    "door-open": {"Diffusion Reward": 100.0, "DACfO": 70.0, "IS": 24.7, "Oracle": 100.0, "ReLAM": 100.0},
    "button-press-wall": {"Diffusion Reward": 60.0, "DACfO": 47.8, "IS": 12.7, "Oracle": 76.7, "ReLAM": 75.8},
    "PushCube": {"Diffusion Reward": 69.3, "DACfO": 76.7, "IS": 46.7, "Oracle": 92.7, "ReLAM": 89.3},
    "PickCube": {"Diffusion Reward": 68.0, "DACfO": 78.7, "IS": 60.7, "Oracle": 90.7, "ReLAM": 88.0},
}
OFFLINE_LEARNER_NAMES = {"iql": "IQL", "awr-mc": "MC-AWR", "filtered-bc": "%BC"}
"""How Table 4 names the ManiSkill rows' offline learner (``iql.learner``)."""


def table4_label(task: str, learner: str = "iql") -> str:
    """A Table 4 row's label; the ManiSkill rows name the profile's offline learner."""
    return TABLE4_LABELS.get(task, task).replace("IQL", OFFLINE_LEARNER_NAMES.get(learner, learner))


METHOD_ORDER = ["relam", "relam-gt", "env-reward", "diffusion-reward", "dacfo", "is", "oracle"]


def bootstrap_ci(values, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over ``values`` (seeds). One value gives a zero-width interval."""
    v = np.asarray(values, float)
    if v.size == 0:
        return float("nan"), float("nan")
    means = np.random.default_rng(seed).choice(v, size=(n_boot, v.size), replace=True).mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def table4(runs: pd.DataFrame, expected_seeds: dict[str, list[int]] | list[int] | None = None,
           tasks: list[str] = TABLE4_TASKS) -> pd.DataFrame:
    """Long Table 4: one row per task x method that has runs. Success % of each run's reported evaluation (the
    checkpoint selected on validation states where the run selects, else the final one): mean over the
    FINISHED seeds with a 95 % bootstrap CI; ``expected_seeds`` (per task, or one list) says which seeds the
    profile asks for, and a cell with any of them unfinished or absent is flagged ``complete=False`` with the
    missing seeds listed; it is never silently averaged over fewer seeds. ``reeval_*``: the same over each seed's
    re-evaluation on more states (``find_runs``; NaN unless every finished seed has one on the same number)."""
    rows = []
    for (task, method), g in runs[runs["task"].isin(tasks)].groupby(["task", "method"], sort=False):
        done = g[g["finished"]].sort_values("seed")   # run dirs list seed10 before seed2; per_seed follows seeds
        want = expected_seeds.get(task) if isinstance(expected_seeds, dict) else expected_seeds
        want = sorted(set(want)) if want is not None else sorted(g["seed"])
        missing = sorted(set(want) - set(done["seed"]))
        stale = sorted(set(g.loc[g["stale"].fillna(False).astype(bool), "seed"]) & set(missing))
        succ = 100 * done["success"].to_numpy(float)
        lo, hi = bootstrap_ci(succ)
        # more states per seed where every finished seed was re-evaluated on the same number of them
        re_n = done["reeval_episodes"].dropna().unique() if "reeval_episodes" in done else []
        re = 100 * done["reeval_success"].to_numpy(float) if len(done) and len(re_n) == 1 and \
            done["reeval_success"].notna().all() else np.array([])
        re_lo, re_hi = bootstrap_ci(re)
        rows.append({"task": task, "method": method, "success_mean": float(succ.mean()) if succ.size else np.nan,
                     "ci_low": lo, "ci_high": hi, "n_seeds": int(len(done)), "n_expected": len(want),
                     "missing_seeds": missing, "stale_seeds": stale, "complete": not missing,
                     "last_subgoal_mean": float(100 * done["last_subgoal"].mean()) if len(done) else np.nan,
                     "seeds": sorted(done["seed"].tolist()), "per_seed": succ.round(1).tolist(),
                     "steps": int(done["steps"].max()) if len(done) else 0,
                     "reeval_mean": float(re.mean()) if re.size else np.nan, "reeval_ci_low": re_lo,
                     "reeval_ci_high": re_hi, "reeval_episodes": int(re_n[0]) if re.size else 0,
                     "reeval_per_seed": re.round(1).tolist()})
    cols = ["task", "method", "success_mean", "ci_low", "ci_high", "n_seeds", "n_expected", "missing_seeds",
            "stale_seeds", "complete", "last_subgoal_mean", "seeds", "per_seed", "steps", "reeval_mean",
            "reeval_ci_low", "reeval_ci_high", "reeval_episodes", "reeval_per_seed"]
    df = pd.DataFrame(rows, columns=cols)
    rank = {t: i for i, t in enumerate(tasks)} | {m: i for i, m in enumerate(METHOD_ORDER)}
    return df.sort_values(["task", "method"], key=lambda s: s.map(lambda v: (rank.get(v, 99), v))
                          ).reset_index(drop=True)


def format_cell(row, latex: bool = False, reeval: bool = False) -> str:
    """'mean [lo, hi]'; incomplete cells are marked (n/expected seeds, missing listed), and a cell averaged over
    MORE seeds than the profile asks (a results tree that also holds extra seeds' runs) says over how many, so it
    is not read beside its 3-seed neighbours as one of them. ``reeval``: of the re-evaluation on more states
    (``table4``'s ``reeval_*``) instead."""
    if row["n_seeds"] == 0:
        return "—" if not latex else "--"
    mean, lo, hi = (row[k] for k in (("reeval_mean", "reeval_ci_low", "reeval_ci_high") if reeval else
                                     ("success_mean", "ci_low", "ci_high")))
    pm = f"{mean:.1f} [{lo:.1f}, {hi:.1f}]"
    if latex:
        pm = f"{mean:.1f} \\scriptsize{{[{lo:.1f}, {hi:.1f}]}}"
    if not row["complete"]:
        seeds = ",".join(map(str, row["missing_seeds"]))
        if row.get("stale_seeds"):
            seeds += f"; stale: {','.join(map(str, row['stale_seeds']))}"
        return pm + (f" ⚠ {row['n_seeds']}/{row['n_expected']} seeds (missing {seeds})" if not latex else
                     f"$^\\dagger$ {row['n_seeds']}/{row['n_expected']}")
    if row["n_seeds"] > row["n_expected"]:
        return pm + f" ({row['n_seeds']} seeds)"
    return pm


def table4_wide(long: pd.DataFrame, tasks: list[str] = TABLE4_TASKS, latex: bool = False,
                learner: str = "iql") -> pd.DataFrame:
    """Rows: the five tasks (the ManiSkill ones named with the offline ``learner``); columns: every method with runs
    (formatted cells), then the paper's numbers (whose ManiSkill rows are IQL's)."""
    methods = [m for m in METHOD_ORDER if m in set(long["method"])] + sorted(set(long["method"]) - set(METHOD_ORDER))
    wide = pd.DataFrame(index=[table4_label(t, learner) for t in tasks])
    for m in methods:
        col = []
        for t in tasks:
            r = long[(long["task"] == t) & (long["method"] == m)]
            col.append(format_cell(r.iloc[0], latex) if len(r) else ("—" if not latex else "--"))
        wide[m] = col
    for name in ["ReLAM", "Oracle", "Diffusion Reward", "DACfO", "IS"]:
        wide[f"paper {name}"] = [f"{PAPER_TABLE4[t][name]:.1f}" if t in PAPER_TABLE4 else "" for t in tasks]
    wide.index.name = "task"
    return wide


def reeval_wide(long: pd.DataFrame, tasks: list[str] = TABLE4_TASKS, latex: bool = False,
                 learner: str = "iql") -> pd.DataFrame:
    """Rows: the tasks with re-evaluations (``table4``'s ``reeval_*``); columns: the methods; cells 'mean [lo, hi]'
    over seeds, flagged like Table 4's where seeds are missing. Empty where nothing was re-evaluated."""
    have = long[long["reeval_episodes"] > 0]
    methods = [m for m in METHOD_ORDER if m in set(have["method"])] + sorted(set(have["method"]) - set(METHOD_ORDER))
    rows = [t for t in tasks if t in set(have["task"])]
    wide = pd.DataFrame(index=[table4_label(t, learner) for t in rows])
    for m in methods:
        col = []
        for t in rows:
            r = have[(have["task"] == t) & (have["method"] == m)]
            col.append(format_cell(r.iloc[0], latex, reeval=True) if len(r) else ("—" if not latex else "--"))
        wide[m] = col
    wide.index.name = "task"
    return wide


def expected_seeds_of(cfg) -> dict[str, list[int]]:
    """The seeds a profile asks for, per task: PPO tasks from ``cfg.ppo``, IQL tasks from ``cfg.iql``."""
    return {t: list(cfg.ppo.seeds) for t in cfg.ppo.tasks} | {t: list(cfg.iql.seeds) for t in cfg.iql.tasks}


DEPTH_WORDS = {True: "camera depth", "xyz": "3-D position (world frame)"}
"""How Table 4's caption names what a ``keypoint_depth`` setting adds to the policies' observation."""


def write_table4(out: Path | str, expected_seeds=None, dest: Path | str | None = None, cfg=None) -> dict[str, Path]:
    """Collect ``<out>/runs`` into Table 4 and write ``table4.md``, ``table4.csv`` (long, numeric) and
    ``table4.tex`` to ``dest`` (default ``out``), atomically. With ``cfg``, runs made under other settings are
    not counted (see ``find_runs``). Returns the paths."""
    from relam.io import atomic_write_text

    out = Path(out)
    dest = Path(dest) if dest is not None else out
    long = table4(find_runs(out, cfg), expected_seeds)
    learner = cfg.iql.learner if cfg is not None else "iql"
    wide = table4_wide(long, learner=learner)
    offline = OFFLINE_LEARNER_NAMES.get(learner, learner)
    # the profile's departures from the paper's learners, one sentence each, so the table says what it measured
    departures = []
    if learner != "iql":
        departures.append(f"ManiSkill rows: offline learner {offline} (`iql.learner: {learner}`; the paper's is IQL).")
    if cfg is not None and cfg.iql.trajectory_filter == "successful":
        departures.append("ManiSkill rows trained on the trajectories that reached success only "
                          "(`iql.trajectory_filter: successful`; the paper uses all).")
    if cfg is not None and cfg.iql.goal_observation:
        departures.append("ManiSkill policies also observe the task's goal position, ManiSkill's `goal_pos` "
                          "(`iql.goal_observation: true`; ours, a reading of the paper's observation).")
    if cfg is not None and cfg.iql.keypoint_depth:
        what = DEPTH_WORDS[cfg.iql.keypoint_depth]
        departures.append(f"ManiSkill policies also observe each keypoint's {what}, as an RGB-D camera gives it "
                          f"(`iql.keypoint_depth: {cfg.iql.keypoint_depth}`; ours; the paper's keypoints are 2-D).")
    if cfg is not None and cfg.iql.relative_goal:
        departures.append("ManiSkill policies also observe the goal's and the end effector's 3-D offsets from each "
                          "object keypoint (`iql.relative_goal: true`; ours).")
    generated_view = None if cfg is None else cfg.iql.subgoal_observation_generated
    if generated_view is not None and generated_view != cfg.iql.subgoal_observation:
        seen = {"objects": "only the object keypoints' part of the subgoal", False: "no subgoal",
                True: "the whole subgoal"}.get(generated_view, repr(generated_view))
        departures.append(f"ManiSkill policies of generated plans (`relam`, `env-reward`) observe {seen} "
                          f"(`iql.subgoal_observation_generated: {generated_view}`; ours); `relam-gt` observes its "
                          "exact plans' whole subgoal.")
    reads_goal = [] if cfg is None else [t for t in dict.fromkeys([*cfg.ppo.tasks, *cfg.iql.tasks])
                                         if cfg.anticipation.for_task(t).model.goal_input]
    if reads_goal:
        departures.append(f"The anticipation model of {', '.join(reads_goal)} also reads the task's goal from the "
                          "simulator (`anticipation.model.goal_input`, with `coord_skip` and `linear_init`; ours, the "
                          "paper's model sees only the first frame and the task-indication frame).")
    perception = {} if cfg is None else {t: cfg.perception.for_task(t)
                                         for t in dict.fromkeys([*cfg.ppo.tasks, *cfg.iql.tasks])}
    anchors = {t: pc.x0_anchor for t, pc in perception.items() if pc.anchor_generated_x0}
    if anchors:
        common = Counter(anchors.values()).most_common(1)[0][0]   # ties: the first task's mode
        own = "".join(f"; {t}: {m}" for t, m in anchors.items() if m != common)
        departures.append(f"Generated plans' x⁰ keypoints are anchored on the parts' first-frame masks, and the model "
                          f"plans on from them (`perception.x0_anchor: {common}`{own}; ours, the paper takes the "
                          "model's x⁰ as it is).")
    if cfg is not None and cfg.ppo.use_sde:
        departures.append(f"Meta-World rows: PPO explores with gSDE (`ppo.use_sde: true`, `sde_sample_freq: "
                          f"{cfg.ppo.sde_sample_freq}`, `log_std_init: {cfg.ppo.log_std_init:g}`; the paper's PPO "
                          "adds white Gaussian noise).")
    deep = {} if cfg is None else {t: cfg.ppo.for_task(t).keypoint_depth for t in cfg.ppo.tasks}
    for setting in dict.fromkeys(d for d in deep.values() if d):
        tasks = [t for t, d in deep.items() if d == setting]
        what = DEPTH_WORDS[setting]
        where = (f"`ppo.keypoint_depth: {setting}`" if cfg.ppo.keypoint_depth == setting else
                 " ".join(f"`ppo.task_overrides.{t}.keypoint_depth: {setting}`" for t in tasks))
        departures.append(f"PPO policies of {', '.join(tasks)} also observe each keypoint's {what} ({where}; ours).")
    note = " ".join([f"Success % of each run's reported evaluation (PPO: the checkpoint chosen on validation states; "
                     f"{offline}: the final one; simulator flag), mean over seeds [95 % bootstrap CI]. "
                     "⚠ = seeds missing (unfinished, absent, or stale: run under other settings): averaged over the "
                     "finished seeds only and flagged. paper = Table 4 of the paper (its ManiSkill rows are IQL's).",
                     *(["(n seeds) = a cell over more seeds than the profile asks: every finished, current run in "
                        "the results tree counts."] if (long["n_seeds"] > long["n_expected"]).any() else []),
                     *departures])
    md = f"{note}\n\n" + _markdown(wide) + "\n"
    re_wide, re_note = reeval_wide(long, learner=learner), ""
    if len(re_wide):
        counts = sorted(set(long.loc[long["reeval_episodes"] > 0, "reeval_episodes"]))
        own = f"they start with the table's {cfg.iql.eval_episodes}" if cfg is not None else \
            "they start with the table's own"
        re_note = (f"The same models played on {' / '.join(map(str, counts))} evaluation states per seed ({own}; "
                   "`iql.reeval_episodes`, notebook 06): success %, mean over seeds [95 % bootstrap CI]. More states "
                   "per seed than the table above, so less of the luck of which states were drawn.")
        md += f"\n{re_note}\n\n" + _markdown(re_wide) + "\n"
    csv = long.assign(missing_seeds=long["missing_seeds"].map(lambda s: " ".join(map(str, s))),
                      stale_seeds=long["stale_seeds"].map(lambda s: " ".join(map(str, s))),
                      seeds=long["seeds"].map(lambda s: " ".join(map(str, s))),
                      per_seed=long["per_seed"].map(lambda s: " ".join(map(str, s))),
                      reeval_per_seed=long["reeval_per_seed"].map(lambda s: " ".join(map(str, s)))
                      ).to_csv(index=False, float_format="%.2f")
    tex_wide = table4_wide(long, latex=True, learner=learner)
    tex = ("% " + note.replace("⚠", "dagger") + "\n" +
           tex_wide.to_latex(escape=False, column_format="l" + "c" * len(tex_wide.columns)))
    if re_note:
        tex_re = reeval_wide(long, latex=True, learner=learner)
        tex += "\n% " + re_note + "\n" + tex_re.to_latex(escape=False, column_format="l" + "c" * len(tex_re.columns))
    paths = {"md": dest / "table4.md", "csv": dest / "table4.csv", "tex": dest / "table4.tex"}
    for key, text in (("md", md), ("csv", csv), ("tex", tex)):
        atomic_write_text(paths[key], text)
    return paths


def _markdown(df: pd.DataFrame) -> str:
    """Markdown table without the optional 'tabulate' dependency."""
    header = [df.index.name or ""] + list(df.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(i)] + [str(v) for v in row]) + " |" for i, row in zip(df.index, df.values)]
    return "\n".join(lines)


def success_curves(curves: pd.DataFrame, task: str, level: float = 0.95) -> dict[str, pd.DataFrame]:
    """Per method: success % per evaluation step, mean over seeds and a bootstrap CI band (only steps every
    seed of that method reached count, so the band never mixes seed sets)."""
    out = {}
    c = curves[curves["task"] == task]
    for method, g in c.groupby("method"):
        seeds = g["seed"].nunique()
        rows = []
        for step, s in g.groupby("step"):
            if s["seed"].nunique() < seeds:
                continue
            v = 100 * s["success_rate"].to_numpy(float)
            lo, hi = bootstrap_ci(v, level)
            rows.append({"step": step, "mean": v.mean(), "lo": lo, "hi": hi,
                         "last_subgoal": 100 * s["last_subgoal_rate"].mean(), "seeds": seeds})
        out[method] = pd.DataFrame(rows)
    return out
