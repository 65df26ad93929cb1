"""Collect RL run directories (``<results>/runs/<task>/<method>/seed<k>/``) into curves and tables.

A run counts as finished when it has ``results.json``; unfinished runs are listed, never averaged in silently.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def find_runs(out: Path | str) -> pd.DataFrame:
    """One row per run directory: task, method, seed, finished, final success / last-subgoal share, steps."""
    rows = []
    for rd in sorted(Path(out).glob("runs/*/*/seed*")):
        if not rd.is_dir():
            continue
        task, method, seed = rd.parent.parent.name, rd.parent.name, int(rd.name[4:])
        res = rd / "results.json"
        row = {"task": task, "method": method, "seed": seed, "finished": res.exists(), "dir": str(rd)}
        if res.exists():
            r = json.loads(res.read_text())
            row.update(success=r["success_rate"], last_subgoal=r["last_subgoal_rate"], steps=r["steps"],
                       seconds=r.get("seconds_this_session"), steps_per_second=r.get("steps_per_second"))
        rows.append(row)
    return pd.DataFrame(rows, columns=["task", "method", "seed", "finished", "success", "last_subgoal", "steps",
                                       "seconds", "steps_per_second", "dir"])


def eval_curves(out: Path | str) -> pd.DataFrame:
    """All evaluation rows of all runs (finished or not), with task / method / seed columns."""
    frames = []
    for csv in sorted(Path(out).glob("runs/*/*/seed*/eval.csv")):
        rd = csv.parent
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
        "last subgoal %": 100 * g["last_subgoal"].mean(), "seeds": g["seed"].count(),
        "steps": g["steps"].max(), "min / run": g["seconds"].mean() / 60, "steps/s": g["steps_per_second"].mean()})
    unfinished = runs[~runs["finished"]].groupby(["task", "method"])["seed"].apply(list)
    table["unfinished seeds"] = [unfinished.get(k, []) for k in table.index]
    return table.round(1)
