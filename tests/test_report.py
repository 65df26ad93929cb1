"""Table 4 builder on synthetic run directories: means, bootstrap CIs, missing seeds flagged."""
import json

import numpy as np
import pandas as pd

from relam.report import bootstrap_ci, eval_curves, find_runs, success_curves, table4, write_table4


def _run(out, task, method, seed, success=None, curve=()):
    rd = out / "runs" / task / method / f"seed{seed}"
    rd.mkdir(parents=True)
    (rd / "config.json").write_text("{}")
    if curve:
        (rd / "eval.csv").write_text("step,success_rate,last_subgoal_rate\n"
                                     + "".join(f"{s},{v},0.0\n" for s, v in curve))
    if success is not None:
        (rd / "results.json").write_text(json.dumps({"success_rate": success, "last_subgoal_rate": 0.1,
                                                     "steps": 100}))


def test_bootstrap_ci_brackets_the_mean_and_collapses_for_equal_values():
    lo, hi = bootstrap_ci([0, 50, 100])
    assert 0 <= lo < 50 < hi <= 100
    assert bootstrap_ci([40, 40, 40]) == (40.0, 40.0)
    # wider spread, wider interval
    assert np.subtract(*bootstrap_ci([0, 100, 0, 100])[::-1]) > np.subtract(*bootstrap_ci([40, 60, 40, 60])[::-1])


def test_table4_means_and_missing_seeds_are_flagged_not_hidden(tmp_path):
    for s, v in enumerate([1.0, 0.5, 0.0]):
        _run(tmp_path, "drawer-open", "relam", s, v)
    _run(tmp_path, "drawer-open", "relam-gt", 0, 1.0)
    _run(tmp_path, "drawer-open", "relam-gt", 1, 0.8)
    _run(tmp_path, "drawer-open", "relam-gt", 2)                 # started, unfinished
    _run(tmp_path, "PushCube", "relam", 0, 0.9)                   # seeds 1, 2 never started
    long = table4(find_runs(tmp_path), expected_seeds=[0, 1, 2])
    row = long.set_index(["task", "method"])
    full = row.loc[("drawer-open", "relam")]
    assert full["success_mean"] == 50.0 and full["complete"] and full["n_seeds"] == 3
    assert full["ci_low"] < 50 < full["ci_high"]
    gt = row.loc[("drawer-open", "relam-gt")]
    assert not gt["complete"] and gt["missing_seeds"] == [2] and gt["n_seeds"] == 2
    assert gt["success_mean"] == 90.0
    push = row.loc[("PushCube", "relam")]
    assert not push["complete"] and push["missing_seeds"] == [1, 2]
    # table rows follow the paper's task order
    assert list(long["task"]) == ["drawer-open", "drawer-open", "PushCube"]

    paths = write_table4(tmp_path, expected_seeds=[0, 1, 2])
    md = paths["md"].read_text()
    assert "50.0 [" in md and "2/3 seeds (missing 2)" in md and "1/3 seeds (missing 1,2)" in md
    assert "100.0" in md and "89.3" in md                     # paper numbers alongside
    assert "Door Open (MW, PPO) | — |" in md                   # no runs: a dash, not a number
    assert "(n seeds)" not in md                               # no cell over extra seeds, no word about them
    csv = pd.read_csv(paths["csv"])
    assert csv.loc[(csv.task == "drawer-open") & (csv.method == "relam"), "success_mean"].item() == 50.0
    assert not csv.loc[csv.method == "relam-gt", "complete"].item()
    tex = paths["tex"].read_text()
    assert "\\begin{tabular}" in tex and "$^\\dagger$ 2/3" in tex


def test_a_cell_over_more_seeds_than_the_profile_asks_says_how_many(tmp_path):
    for s, v in zip([0, 1, 2, 3, 10], [1.0, 1.0, 1.0, 0.0, 0.5]):   # the profile asks 0-2; 3 and 10 ran too
        _run(tmp_path, "door-open", "relam", s, v)
    for s in range(3):
        _run(tmp_path, "drawer-open", "relam", s, 1.0)
    long = table4(find_runs(tmp_path), expected_seeds=[0, 1, 2]).set_index("task")
    assert long.loc["door-open", "complete"] and long.loc["door-open", "n_seeds"] == 5
    assert long.loc["door-open", "success_mean"] == 70.0     # every finished seed counts, not only 0-2
    # per-seed values line up with the seeds, although seed10's directory sorts before seed2's
    assert long.loc["door-open", "seeds"] == [0, 1, 2, 3, 10]
    assert long.loc["door-open", "per_seed"] == [100.0, 100.0, 100.0, 0.0, 50.0]
    md = write_table4(tmp_path, expected_seeds=[0, 1, 2])["md"].read_text()
    assert "70.0 [" in md and "(5 seeds)" in md
    assert md.count("(5 seeds)") == 1 and "(3 seeds)" not in md   # the profile's 3-seed cell carries no count
    assert "(n seeds) = a cell over more seeds" in md        # and the caption says what the count means
    assert "(5 seeds)" in (tmp_path / "table4.tex").read_text()


def test_expected_seeds_per_task_from_the_profile(tmp_path):
    from relam.config import load_config
    from relam.report import expected_seeds_of

    _run(tmp_path, "door-open", "relam", 0, 1.0)
    _run(tmp_path, "PickCube", "relam", 0, 1.0)
    cfg = load_config("smoke", {"ppo": {"seeds": [0]}, "iql": {"seeds": [0, 4]}})
    long = table4(find_runs(tmp_path), expected_seeds_of(cfg)).set_index("task")
    assert long.loc["door-open", "complete"]
    assert long.loc["PickCube", "missing_seeds"] == [4]


def test_success_curves_only_average_steps_every_seed_reached(tmp_path):
    _run(tmp_path, "door-open", "relam", 0, 1.0, curve=[(10, 0.0), (20, 1.0)])
    _run(tmp_path, "door-open", "relam", 1, curve=[(10, 1.0)])          # interrupted after the first eval
    c = success_curves(eval_curves(tmp_path), "door-open")["relam"]
    assert list(c["step"]) == [10] and c["mean"].item() == 50.0
    assert c["lo"].item() <= 50 <= c["hi"].item()


def test_runs_made_under_other_settings_are_stale_not_counted(tmp_path):
    from relam.config import load_config
    from relam.rl.ppo import run_config

    cfg = load_config("smoke", {"results_dir": str(tmp_path), "ppo": {"seeds": [0, 1]}})
    for seed, delta in ((0, cfg.reward.delta), (1, 0.5)):
        _run(tmp_path, "drawer-open", "relam-gt", seed, 1.0 if seed == 0 else 0.0)
        conf = run_config(cfg, "drawer-open", "relam-gt", seed)
        conf["reward"]["delta"] = delta
        (tmp_path / "runs" / "drawer-open" / "relam-gt" / f"seed{seed}" / "config.json").write_text(json.dumps(conf))
    runs = find_runs(tmp_path, cfg).set_index("seed")
    assert runs.loc[0, "finished"] and not runs.loc[0, "stale"]
    assert runs.loc[1, "stale"] and not runs.loc[1, "finished"]
    row = table4(find_runs(tmp_path, cfg), [0, 1]).iloc[0]
    assert row["success_mean"] == 100.0 and row["missing_seeds"] == [1] and row["stale_seeds"] == [1]
    assert "stale: 1" in write_table4(tmp_path, [0, 1], cfg=cfg)["md"].read_text()
    assert table4(find_runs(tmp_path), [0, 1]).iloc[0]["success_mean"] == 50.0   # without cfg: both counted


def test_a_retrained_anticipation_model_makes_generated_plan_runs_stale(tmp_path):
    """Runs and relabelled files record which anticipation model planned; ground-truth runs do not depend on it."""
    from relam.config import load_config
    from relam.rl.iql import run_config as iql_run_config
    from relam.rl.ppo import run_config

    cfg = load_config("smoke", {"results_dir": str(tmp_path), "ppo": {"seeds": [0]}})
    model_cfg = tmp_path / "anticipation" / "drawer-open" / "config.json"
    model_cfg.parent.mkdir(parents=True)
    model_cfg.write_text('{"lr": 0.0001}')
    (model_cfg.parent / "metrics.json").write_text('{"tasks": ["drawer-open"], "val": {"subgoal_px": 5.0}}')
    for method in ("relam", "relam-gt"):
        _run(tmp_path, "drawer-open", method, 0, 1.0)
        conf = run_config(cfg, "drawer-open", method, 0)
        (tmp_path / "runs" / "drawer-open" / method / "seed0" / "config.json").write_text(json.dumps(conf))
    before_iql = iql_run_config(cfg, "drawer-open", "relam", 0)
    assert not find_runs(tmp_path, cfg)["stale"].any()
    model_cfg.write_text('{"lr": 0.0003}')                                         # retrained under other settings
    runs = find_runs(tmp_path, cfg).set_index("method")
    assert runs.loc["relam", "stale"] and not runs.loc["relam", "finished"]
    assert runs.loc["relam-gt", "finished"] and not runs.loc["relam-gt", "stale"]
    assert iql_run_config(cfg, "drawer-open", "relam", 0) != before_iql
    (model_cfg.parent / "metrics.json").unlink()           # a model being retrained: its runs count as stale
    runs = find_runs(tmp_path, cfg).set_index("method")
    assert runs.loc["relam", "stale"] and runs.loc["relam-gt", "finished"]


def test_the_x0_anchoring_mode_defines_generated_plan_runs_only(tmp_path):
    """Runs made before x0_anchor existed ('nearest') keep their config; another mode makes a different run."""
    from relam.config import load_config
    from relam.rl.ppo import run_config

    (tmp_path / "anticipation" / "drawer-open").mkdir(parents=True)
    (tmp_path / "anticipation" / "drawer-open" / "metrics.json").write_text(
        '{"tasks": ["drawer-open"], "val": {"subgoal_px": 5.0}}')
    near = load_config("smoke", {"results_dir": str(tmp_path), "perception": {"x0_anchor": "nearest"}})
    cent = load_config("smoke", {"results_dir": str(tmp_path), "perception": {"x0_anchor": "centroid"}})
    assert "x0_anchor" not in run_config(near, "drawer-open", "relam", 0)
    assert run_config(cent, "drawer-open", "relam", 0)["x0_anchor"] == "centroid"
    assert run_config(near, "drawer-open", "relam-gt", 0) == run_config(cent, "drawer-open", "relam-gt", 0)


def test_anchoring_on_movable_parts_defines_generated_plan_runs_only(tmp_path):
    """Runs made with whole-prompt masks (before the option) keep their config; movable-only masks make new ones."""
    from relam.config import load_config
    from relam.rl.ppo import run_config

    (tmp_path / "anticipation" / "drawer-open").mkdir(parents=True)
    (tmp_path / "anticipation" / "drawer-open" / "metrics.json").write_text(
        '{"tasks": ["drawer-open"], "val": {"subgoal_px": 5.0}}')
    whole = load_config("smoke", {"results_dir": str(tmp_path), "perception": {"anchor_movable_only": False}})
    movable = load_config("smoke", {"results_dir": str(tmp_path)})
    assert movable.perception.anchor_movable_only                       # the default
    assert "anchor_movable_only" not in run_config(whole, "drawer-open", "relam", 0)
    assert run_config(movable, "drawer-open", "relam", 0)["anchor_movable_only"] is True
    assert run_config(whole, "drawer-open", "relam-gt", 0) == run_config(movable, "drawer-open", "relam-gt", 0)


def test_find_runs_reports_the_selected_checkpoint_beside_the_final_model(tmp_path):
    rd = tmp_path / "runs" / "drawer-open" / "relam" / "seed0"
    rd.mkdir(parents=True)
    (rd / "config.json").write_text("{}")
    (rd / "results.json").write_text(json.dumps({
        "success_rate": 0.9, "last_subgoal_rate": 0.2, "steps": 300, "selected_step": 100,
        "final_eval": {"step": 300, "success_rate": 0.4}}))
    _run(tmp_path, "drawer-open", "relam", 1, 0.6)   # made before selection existed: final = reported
    runs = find_runs(tmp_path).set_index("seed")
    assert runs.loc[0, "success"] == 0.9 and runs.loc[0, "final_success"] == 0.4 and runs.loc[0, "selected_step"] == 100
    assert runs.loc[1, "final_success"] == 0.6 and runs.loc[1, "selected_step"] == 100


def test_table4_names_the_profiles_offline_learner(tmp_path):
    from relam.config import load_config

    _run(tmp_path, "PushCube", "relam", 0, 1.0)
    md = write_table4(tmp_path, [0])["md"].read_text()
    assert "Push Cube (MS, IQL)" in md and "offline learner" not in md
    cfg = load_config("smoke", {"results_dir": str(tmp_path), "iql": {"learner": "awr-mc", "seeds": [0]}})
    md = write_table4(tmp_path, [0], cfg=cfg)["md"].read_text()
    assert "Push Cube (MS, MC-AWR)" in md and "`iql.learner: awr-mc`" in md and "(MS, IQL)" not in md
    assert "`iql.trajectory_filter: successful`" in md       # the smoke profile's, as cpu's
    assert "`iql.goal_observation: true`" in md              # the smoke profile's, as cpu's
    assert "`iql.keypoint_depth: xyz`" in md
    assert "`iql.relative_goal: true`" in md                 # the smoke profile's, as cpu's
    assert "anticipation model of PickCube also reads" in md  # the smoke profile's, as cpu's
    assert "observe only the object keypoints' part of the subgoal" in md   # the smoke profile's, as cpu's
    # the smoke profile's x0 anchoring, as cpu's: every task 'centroid' but PickCube's own 'residual'
    assert "(`perception.x0_anchor: centroid`; PickCube: residual; ours" in md
    cfg.perception.anchor_generated_x0, cfg.perception.task_overrides = False, {}
    assert "x0_anchor" not in write_table4(tmp_path, [0], cfg=cfg)["md"].read_text()
    cfg.iql.trajectory_filter, cfg.iql.goal_observation, cfg.iql.keypoint_depth = "none", False, False
    cfg.iql.subgoal_observation_generated, cfg.iql.relative_goal = None, False
    cfg.anticipation.task_overrides = {}
    md = write_table4(tmp_path, [0], cfg=cfg)["md"].read_text()
    assert "trajectory_filter" not in md and "goal_observation" not in md and "goal_input" not in md
    assert "subgoal_observation" not in md and "keypoint_depth" not in md and "relative_goal" not in md


def test_table4_says_when_ppo_explores_with_gsde(tmp_path):
    from relam.config import load_config

    _run(tmp_path, "drawer-open", "relam", 0, 1.0)
    cfg = load_config("smoke", {"results_dir": str(tmp_path), "ppo": {"seeds": [0]}})
    md = write_table4(tmp_path, [0], cfg=cfg)["md"].read_text()
    assert not cfg.ppo.use_sde and "gSDE" not in md and "PPO policies of" not in md
    cfg.ppo.task_overrides = {"drawer-open": {"keypoint_depth": "xyz"}}
    md = write_table4(tmp_path, [0], cfg=cfg)["md"].read_text()
    assert ("PPO policies of drawer-open also observe each keypoint's 3-D position (world frame) "
            "(`ppo.task_overrides.drawer-open.keypoint_depth: xyz`; ours)") in md
    cfg.ppo.task_overrides = {}
    cfg = load_config("smoke", {"results_dir": str(tmp_path),
                                "ppo": {"seeds": [0], "use_sde": True, "sde_sample_freq": 4, "log_std_init": -2.0}})
    md = write_table4(tmp_path, [0], cfg=cfg)["md"].read_text()
    assert "`ppo.use_sde: true`, `sde_sample_freq: 4`, `log_std_init: -2`" in md


def _reeval(out, task, method, seed, success, episodes, current=True):
    rd = out / "runs" / task / method / f"seed{seed}"
    mtime = (rd / "results.json").stat().st_mtime_ns + (0 if current else 1)
    (rd / f"reeval{episodes}.json").write_text(json.dumps(
        {"success_rate": success, "episodes": episodes, "key": {"results_mtime_ns": mtime, "episodes": episodes}}))


def test_table4_adds_the_reevaluation_on_more_states_only_where_every_seed_has_a_current_one(tmp_path):
    from relam.config import load_config
    from relam.report import expected_config

    for s, (v, re) in enumerate([(1.0, 0.8), (0.5, 0.6), (0.0, 0.4)]):
        _run(tmp_path, "PickCube", "relam", s, v)
        _reeval(tmp_path, "PickCube", "relam", s, re, 50)
        _reeval(tmp_path, "PickCube", "relam", s, 0.0, 20)          # another count: not the profile's
    for s in range(3):
        _run(tmp_path, "PickCube", "relam-gt", s, 1.0)
        _reeval(tmp_path, "PickCube", "relam-gt", s, 0.9, 50, current=(s != 1))   # seed 1 retrained since
    _run(tmp_path, "PushCube", "relam", 0, 1.0)                   # never re-evaluated
    cfg = load_config("smoke", {"results_dir": str(tmp_path), "iql": {"seeds": [0, 1, 2], "reeval_episodes": 50}})
    cfg.iql.tasks = ["PushCube", "PickCube"]
    for rd in tmp_path.glob("runs/*/*/seed*"):   # runs of this profile, so that they count as current
        (rd / "config.json").write_text(json.dumps(expected_config(cfg, rd.parent.parent.name, rd.parent.name,
                                                                   int(rd.name[4:]))))
    runs = find_runs(tmp_path).set_index(["task", "method", "seed"]).sort_index()
    assert runs.loc[("PickCube", "relam", 0), "reeval_episodes"] == 50     # without a profile: the most states
    assert np.isnan(runs.loc[("PickCube", "relam-gt", 1), "reeval_success"])   # a file from before a retrain
    long = table4(find_runs(tmp_path, cfg), [0, 1, 2]).set_index(["task", "method"])
    pick = long.loc[("PickCube", "relam")]
    assert pick["success_mean"] == 50.0 and np.isclose(pick["reeval_mean"], 60.0) and pick["reeval_episodes"] == 50
    assert pick["reeval_ci_low"] < 60.0 < pick["reeval_ci_high"] and pick["reeval_per_seed"] == [80.0, 60.0, 40.0]
    assert np.isnan(long.loc[("PickCube", "relam-gt"), "reeval_mean"])   # one seed's is stale: no mixed cell
    assert np.isnan(long.loc[("PushCube", "relam"), "reeval_mean"])
    cfg.iql.reeval_episodes = 20
    assert long.loc[("PickCube", "relam"), "reeval_mean"] != \
        table4(find_runs(tmp_path, cfg), [0, 1, 2]).set_index(["task", "method"]).loc[("PickCube", "relam"), "reeval_mean"]
    cfg.iql.reeval_episodes = 50
    md = write_table4(tmp_path, [0, 1, 2], cfg=cfg)["md"].read_text()
    main, extra = md.split("The same models played on 50 evaluation states")
    assert "Pick Cube (MS, MC-AWR) | 50.0 [" in main and "60.0 [" not in main
    assert "| Pick Cube (MS, MC-AWR) | 60.0 [" in extra and "Push Cube" not in extra
    assert "they start with the table's 1;" in extra               # the smoke profile's eval_episodes
    assert pd.read_csv(tmp_path / "table4.csv").set_index(["task", "method"]).loc[
        ("PickCube", "relam"), "reeval_per_seed"] == "80.0 60.0 40.0"
    assert "The same models played" in (tmp_path / "table4.tex").read_text()
    (tmp_path / "runs" / "PickCube" / "relam" / "seed0" / "reeval50.json").unlink()
    assert "The same models played" not in write_table4(tmp_path, [0, 1, 2], cfg=cfg)["md"].read_text()
