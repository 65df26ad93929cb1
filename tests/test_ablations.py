"""Ablation directories: overrides applied, the profile's demos shared, results compared side by side."""
import json

import pandas as pd
import pytest

from relam.ablations import ablation_config, compare
from relam.config import ConfigError, load_config


def _run(out, task, method, seed, success):
    rd = out / "runs" / task / method / f"seed{seed}"
    rd.mkdir(parents=True)
    (rd / "config.json").write_text("{}")
    (rd / "results.json").write_text(json.dumps({"success_rate": success, "last_subgoal_rate": 0.0, "steps": 1}))


def test_ablation_config_overrides_settings_and_shares_demos(tmp_path):
    cfg = load_config("smoke", {"results_dir": str(tmp_path / "res"), "ppo": {"seeds": [3]}})
    with pytest.raises(FileNotFoundError, match="01_collect_demos"):
        ablation_config(cfg, "kp", {})
    for d in ("demos", "offline"):
        (cfg.out / d).mkdir(parents=True)
        (cfg.out / d / "drawer-open.h5").write_bytes(b"x")
    abl = ablation_config(cfg, "kp", {"perception": {"keypoints": {"selection": "near-object"}}})
    assert abl.out == cfg.out / "ablations" / "kp"
    assert abl.perception.keypoints.selection == "near-object"
    assert cfg.perception.keypoints.selection == "fps"               # the profile's config is untouched
    assert abl.ppo.seeds == [3] and abl.profile == "smoke"           # everything else carried over
    assert (abl.out / "demos" / "drawer-open.h5").read_bytes() == b"x"
    assert (abl.out / "demos").is_symlink()
    assert ablation_config(cfg, "kp", {}).out == abl.out             # again: links already there
    with pytest.raises(ValueError, match="unknown keypoint selection"):
        ablation_config(cfg, "bad", {"perception": {"keypoints": {"selection": "nearest"}}})
    with pytest.raises(ValueError, match="plain directory name"):
        ablation_config(cfg, "../x", {})


def test_ablation_runs_started_at_once_share_the_links(tmp_path, monkeypatch):
    """Two processes of one ablation: the other one links 'demos' between our check and our symlink."""
    import os
    import relam.ablations as ablations

    cfg = load_config("smoke", {"results_dir": str(tmp_path / "res")})
    for d in ("demos", "offline"):
        (cfg.out / d).mkdir(parents=True)
    real = os.symlink

    def racing(src, dst):
        real(src, dst)   # the other process wins the race ...
        real(src, dst)   # ... and ours fails with FileExistsError

    monkeypatch.setattr(ablations.os, "symlink", racing)
    abl = ablation_config(cfg, "both", {})
    assert (abl.out / "demos").resolve() == (cfg.out / "demos").resolve()
    # a link to something else is not ours to accept
    monkeypatch.setattr(ablations.os, "symlink", lambda src, dst: (real(str(tmp_path), dst), real(src, dst)))
    with pytest.raises(FileExistsError):
        ablation_config(cfg, "other", {})


def test_an_ablation_can_reuse_the_profiles_subgoals_and_models(tmp_path):
    cfg = load_config("smoke", {"results_dir": str(tmp_path / "res")})
    for d in ("demos", "offline", "subgoals"):
        (cfg.out / d).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="04_anticipation"):
        ablation_config(cfg, "anchor", {}, reuse=("subgoals", "anticipation"))
    (cfg.out / "anticipation" / "drawer-open").mkdir(parents=True)
    (cfg.out / "anticipation" / "drawer-open" / "config.json").write_text("{}")
    abl = ablation_config(cfg, "anchor", {"perception": {"x0_anchor": "centroid"}}, reuse=("subgoals", "anticipation"))
    assert abl.perception.x0_anchor == "centroid"
    assert (abl.out / "anticipation").is_symlink() and (abl.out / "subgoals").is_symlink()
    assert (abl.out / "anticipation" / "drawer-open" / "config.json").read_text() == "{}"
    assert not (ablation_config(cfg, "own", {}).out / "anticipation").exists()   # not reused unless asked
    with pytest.raises(ValueError, match="can be reused"):
        ablation_config(cfg, "x", {}, reuse=("runs",))
    with pytest.raises(ValueError, match="x0_anchor"):
        load_config("smoke", {"perception": {"x0_anchor": "mean"}})


def test_an_ablation_that_changes_a_shared_stage_is_refused_before_it_can_overwrite_the_profile(tmp_path):
    """A shared stage is a link to the profile's directory: rebuilding it under other settings would write there
    (it happened: a keypoint ablation that reused 'subgoals' rebuilt the profile's subgoal dataset)."""
    cfg = load_config("smoke", {"results_dir": str(tmp_path / "res")})
    for d in ("demos", "offline", "subgoals", "anticipation"):
        (cfg.out / d).mkdir(parents=True)
    near = {"perception": {"keypoints": {"selection": "near-object"}}}
    with pytest.raises(ValueError, match=r"perception\.keypoints.*'subgoals'.*drop 'subgoals' from reuse"):
        ablation_config(cfg, "kp", near, reuse=("subgoals",))
    assert not (cfg.out / "ablations" / "kp").exists()                  # refused before anything was made
    with pytest.raises(ValueError, match=r"\['anticipation'\].*'anticipation'"):
        ablation_config(cfg, "lr", {"anticipation": {"lr": 0.01}}, reuse=("subgoals", "anticipation"))
    with pytest.raises(ValueError, match=r"\['demos'\].*'demos'.*own profile"):
        ablation_config(cfg, "more-demos", {"demos": {"n_demos": 9}})
    # what only RL reads may share every stage, and what only the model reads may share the subgoals
    assert ablation_config(cfg, "lr", {"anticipation": {"lr": 0.01}}, reuse=("subgoals",)).anticipation.lr == 0.01
    ablation_config(cfg, "delta", {"reward": {"delta": 0.05}, "perception": {"x0_anchor": "nearest"}},
                    reuse=("subgoals", "anticipation"))
    assert ablation_config(cfg, "kp", near).perception.keypoints.selection == "near-object"   # without reuse: fine
    # a task's own x0 anchoring is RL-time only; its own keypoints are not (PickCube's cpu override has both)
    mine = ablation_config(cfg, "pick-anchor", {"perception": {"task_overrides": {"PickCube": {"x0_anchor": "reselect"}}}},
                           reuse=("subgoals", "anticipation"))
    assert mine.perception.for_task("PickCube").x0_anchor == "reselect"
    with pytest.raises(ValueError, match=r"task_overrides\[subgoals\].*'subgoals'"):
        ablation_config(cfg, "pick-kp", {"perception": {"task_overrides": {"PickCube": {"keypoints": {"window": 3}}}}},
                        reuse=("subgoals",))


def test_an_x0_anchoring_ablation_reaches_the_tasks_that_set_their_own_mode(tmp_path):
    from relam.ablations import x0_anchor_everywhere

    cfg = load_config("smoke", {"results_dir": str(tmp_path / "res")})
    assert cfg.perception.for_task("PickCube").x0_anchor == "residual" != cfg.perception.x0_anchor
    for d in ("demos", "offline", "subgoals", "anticipation"):
        (cfg.out / d).mkdir(parents=True)
    near = {"perception": {"x0_anchor": "nearest"}}
    merged = ablation_config(cfg, "merged", near, reuse=("subgoals", "anticipation"))
    assert merged.perception.for_task("PickCube").x0_anchor == "residual"   # a plain merge misses PickCube
    abl = ablation_config(cfg, "near", x0_anchor_everywhere(near, cfg), reuse=("subgoals", "anticipation"))
    assert {abl.perception.for_task(t).x0_anchor for t in ("PickCube", "PushCube", "drawer-open")} == {"nearest"}
    assert abl.perception.for_task("door-open").keypoints.num_keypoints == 8   # the task's other overrides stay
    # a task the ablation sets itself keeps the ablation's own setting; other overrides come back as given
    own = {"perception": {"x0_anchor": "nearest", "task_overrides": {"PickCube": {"x0_anchor": "reselect"}}}}
    assert ablation_config(cfg, "own", x0_anchor_everywhere(own, cfg), reuse=("subgoals", "anticipation")) \
        .perception.for_task("PickCube").x0_anchor == "reselect"
    delta = {"reward": {"delta": 0.05}}
    assert x0_anchor_everywhere(delta, cfg) is delta


def test_compare_lists_profile_and_ablation_side_by_side(tmp_path):
    cfg = load_config("smoke", {"results_dir": str(tmp_path)})
    _run(tmp_path, "PushCube", "relam", 0, 0.2)
    _run(tmp_path, "PushCube", "relam", 1, 0.4)
    _run(tmp_path / "ablations" / "kp", "PushCube", "relam", 0, 0.6)
    (tmp_path / "ablations" / "kp" / "runs" / "PushCube" / "relam" / "seed1").mkdir()   # unfinished: not counted
    _run(tmp_path / "ablations" / "kp", "PushCube", "relam", 2, 1.0)    # no profile seed 2: not paired
    table = compare(cfg, ["kp"]).set_index("settings")
    assert table.loc["profile", "success %"] == pytest.approx(30.0) and table.loc["profile", "seeds"] == 2
    assert table.loc["kp", "success %"] == pytest.approx(80.0) and table.loc["kp", "per seed"] == [60, 100]
    # paired by seed: only seed 0 is finished in both, 60 - 20 points; the profile row has no difference
    assert table.loc["kp", "paired seeds"] == 1 and table.loc["kp", "paired diff"] == pytest.approx(40.0)
    assert table.loc["kp", "diff 95 % CI"] == (40.0, 40.0) and pd.isna(table.loc["profile", "paired diff"])


def test_compare_pairs_seeds_and_its_interval_spans_a_coin_flip(tmp_path):
    """Door-open's lesson: two settings whose seeds swing 0-100 % can differ by tens of points in their means with
    an interval that still covers 0; a consistent gain gives an interval that excludes it."""
    cfg = load_config("smoke", {"results_dir": str(tmp_path)})
    base = [0.8, 0.0, 0.8, 0.5, 0.9, 0.2]
    for s, v in enumerate(base):
        _run(tmp_path, "door-open", "relam", s, v)
    for s, v in enumerate([0.9, 1.0, 0.0, 1.0, 0.0, 0.4]):        # reshuffled: -90 to +100 per seed, +1.7 on average
        _run(tmp_path / "ablations" / "flip", "door-open", "relam", s, v)
    for s, v in enumerate(base):                                   # every seed +10 points
        _run(tmp_path / "ablations" / "gain", "door-open", "relam", s, min(v + 0.1, 1.0))
    table = compare(cfg, ["flip", "gain"]).set_index("settings")
    lo, hi = table.loc["flip", "diff 95 % CI"]
    assert table.loc["flip", "paired diff"] == pytest.approx(100 * (3.3 - 3.2) / 6, abs=0.1) and lo < 0 < hi
    lo, hi = table.loc["gain", "diff 95 % CI"]
    assert table.loc["gain", "paired seeds"] == 6 and lo == pytest.approx(10.0) and hi == pytest.approx(10.0)


def test_the_ablation_notebook_runs_only_when_named():
    from relam.runner import numbered_notebooks

    default = [p.name[:2] for p in numbered_notebooks()]
    assert "08" not in default and {"01", "04", "09"} <= set(default)
    assert [p.name for p in numbered_notebooks(["08"])] == ["08_ablations.ipynb"]


def test_the_keypoint_count_ablation_changes_keypoints_and_model_together(tmp_path):
    from relam.ablations import num_keypoints_overrides
    from relam.models.anticipation import check_num_keypoints

    cfg = load_config("smoke", {"results_dir": str(tmp_path / "res")})
    for d in ("demos", "offline"):
        (cfg.out / d).mkdir(parents=True)
    abl = ablation_config(cfg, "k8", num_keypoints_overrides(8))
    assert abl.perception.keypoints.num_keypoints == 8 and abl.anticipation.model.num_keypoints == 8
    assert cfg.perception.keypoints.num_keypoints == cfg.anticipation.model.num_keypoints == 4
    check_num_keypoints(abl.anticipation.model.num_keypoints, abl.perception.keypoints.num_keypoints)
    # K alone (the model left at 4) is what the helper exists to prevent: refused at load, naming the fix
    with pytest.raises(ConfigError, match="set anticipation.model.num_keypoints: 8"):
        ablation_config(cfg, "k8-only", {"perception": {"keypoints": {"num_keypoints": 8}}})
    with pytest.raises(ValueError, match="integer >= 2"):
        num_keypoints_overrides(1)


# door-open with its own K, as the cpu profile has it
OWN_K = {"perception": {"task_overrides": {"door-open": {"keypoints": {"num_keypoints": 8}}}},
         "anticipation": {"task_overrides": {"door-open": {"model": {"num_keypoints": 8}},
                                             "PickCube": {"lr": 0.002}}}}


def test_a_task_can_have_its_own_keypoint_count(tmp_path):
    from relam.config import multitask_tasks, task_keypoints
    from relam.rl.ppo import keypoint_parts, make_planner, perception_setting

    cfg = load_config("smoke", {"results_dir": str(tmp_path / "res"), **OWN_K})
    assert [task_keypoints(cfg, t) for t in ("door-open", "drawer-open")] == [8, 4]
    assert cfg.perception.for_task("door-open").task_overrides == {}
    assert cfg.perception.for_task("door-open").keypoints.window == cfg.perception.keypoints.window   # the rest kept
    assert "door-open" not in multitask_tasks(cfg) and "drawer-open" in multitask_tasks(cfg)
    assert perception_setting(cfg, "door-open")["keypoints"]["num_keypoints"] == 8
    assert perception_setting(cfg, "drawer-open")["keypoints"]["num_keypoints"] == 4
    # the reward's part labels follow the task's K: 6 arm points and 2 on the door, 3 + 1 on the drawer
    assert keypoint_parts(cfg, "door-open").tolist() == [0] * 6 + [1] * 2
    assert keypoint_parts(cfg, "drawer-open").tolist() == [0] * 3 + [1]
    with pytest.raises(ValueError, match="anticipation_run='task'"):
        make_planner("door-open", "relam", cfg, "multitask")
    # the model's K left at 4 for door-open: refused at load, naming the key to set
    with pytest.raises(ConfigError, match="set anticipation.task_overrides.door-open.model.num_keypoints: 8"):
        load_config("smoke", {"perception": OWN_K["perception"], "anticipation": {"task_overrides": {}}})
    with pytest.raises(ConfigError, match="unknown config key 'perception.keypoints.num_keypoint'"):
        load_config("smoke", {"perception": {"task_overrides": {"door-open": {"keypoints": {"num_keypoint": 8}}}}})
    with pytest.raises(ValueError, match="unknown task"):
        load_config("smoke", {"perception": {"task_overrides": {"door-opn": {}}}})


def test_the_keypoint_count_ablation_overrides_a_tasks_own_count_too(tmp_path):
    from relam.ablations import num_keypoints_overrides
    from relam.config import task_keypoints

    cfg = load_config("smoke", {"results_dir": str(tmp_path / "res"), **OWN_K})
    for d in ("demos", "offline"):
        (cfg.out / d).mkdir(parents=True)
    k12 = ablation_config(cfg, "k12", num_keypoints_overrides(12, cfg))
    assert {task_keypoints(k12, t) for t in k12.env.tasks} == {12}
    assert k12.anticipation.for_task("door-open").model.num_keypoints == 12
    assert k12.anticipation.for_task("PickCube").lr == 0.002            # other per-task settings kept
    assert task_keypoints(cfg, "door-open") == 8 and task_keypoints(cfg, "drawer-open") == 4   # profile untouched


def test_the_multitask_model_leaves_out_a_task_with_its_own_keypoint_count(tmp_path, monkeypatch):
    import relam.models.train_anticipation as ta
    import relam.perception.subgoals as subgoals

    cfg = load_config("smoke", {"results_dir": str(tmp_path / "res"), **OWN_K,
                                "env": {"tasks": ["drawer-open", "door-open", "button-press-wall"]}})
    trained = {}
    monkeypatch.setattr(subgoals.SubgoalDataset, "load", staticmethod(lambda path, task=None: task))
    monkeypatch.setattr(ta, "train", lambda out, ds, c, *a: trained.setdefault(out.name, (sorted(ds),
                                                                                          c.model.num_keypoints)))
    ta.train_profile(cfg, progress=False)
    assert trained["door-open"] == (["door-open"], 8) and trained["drawer-open"] == (["drawer-open"], 4)
    assert trained["multitask"] == (["button-press-wall", "drawer-open"], 4)


def test_runner_params_are_read_as_yaml_and_bad_ones_are_refused():
    from relam.runner import parse_params

    got = parse_params(["iql_tasks=[PickCube]", "validation_states=2", "ppo_tasks=[door-open, drawer-open]",
                        "note=a=b"])
    assert got == {"iql_tasks": ["PickCube"], "validation_states": 2, "ppo_tasks": ["door-open", "drawer-open"],
                   "note": "a=b"}
    assert parse_params(None) == {}
    for bad in ("iql_tasks", "1x=2", "profile=cpu"):
        with pytest.raises(SystemExit, match="--param"):
            parse_params([bad])


def test_runner_refuses_a_param_that_no_selected_notebook_defines(tmp_path, capsys):
    from relam.runner import run

    res = tmp_path / "res"
    assert run("smoke", str(res), only=["08"], params={"iql_task": ["PickCube"]}) == 2   # typo of iql_tasks
    assert "iql_task" in capsys.readouterr().err and not res.exists()                  # refused before anything ran


def test_runner_gives_the_notebooks_a_relative_results_dir_as_the_callers(tmp_path, monkeypatch):
    import papermill as pm

    from relam.runner import run

    seen = []
    monkeypatch.setattr(pm, "execute_notebook", lambda nb, target, parameters, **kw: seen.append((target, parameters)))
    monkeypatch.chdir(tmp_path)
    assert run("smoke", "rel/out", only=["09"]) == 0
    (target, params), = seen
    assert params["results_dir"] == str(tmp_path / "rel" / "out")      # not notebooks/rel/out, the notebooks' cwd
    assert target == str(tmp_path / "rel" / "out" / "notebooks" / "09_figures.ipynb")


def test_seed_comparison_plot_draws_every_seed_and_names_a_missing_cell(tmp_path):
    from relam.viz import plot_seed_comparison

    cfg = load_config("smoke", {"results_dir": str(tmp_path)})
    for s, v in enumerate([0.8, 0.0, 0.8]):
        _run(tmp_path, "door-open", "relam", s, v)
        _run(tmp_path / "ablations" / "flip", "door-open", "relam", s, 1.0 - v)
    table = compare(cfg, ["flip"])
    ax = plot_seed_comparison(table, "door-open", "relam")
    dots = [tuple(map(tuple, c.get_offsets())) for c in ax.collections]
    assert [[y for _, y in d] for d in dots] == [[80, 0, 80], [20, 100, 20]]
    # the paired difference (-60, +100, -60 points: mean -7) and its interval are on the label
    assert ax.get_xticklabels()[1].get_text().endswith("-7 [-60, +100]")
    with pytest.raises(ValueError, match="no finished runs of drawer-open / relam.*door-open"):
        plot_seed_comparison(table, "drawer-open", "relam")


def test_curves_by_settings_draw_one_line_per_setting_with_runs(tmp_path):
    from relam.viz import plot_curves_by_settings

    cfg = load_config("smoke", {"results_dir": str(tmp_path)})
    other = load_config("smoke", {"results_dir": str(tmp_path / "ablations" / "lin")})
    for out, rates in ((tmp_path, (0.0, 0.5)), (tmp_path / "ablations" / "lin", (0.2, 1.0))):
        for seed in (0, 1):
            rd = out / "runs" / "door-open" / "relam" / f"seed{seed}"
            rd.mkdir(parents=True)
            (rd / "eval.csv").write_text("step,success_rate,last_subgoal_rate\n"
                                         + "".join(f"{1000 * (i + 1)},{r},0\n" for i, r in enumerate(rates)))
    fig = plot_curves_by_settings([("profile", cfg), ("lin", other), ("none", load_config("smoke", {
        "results_dir": str(tmp_path / "nothing")}))], ["door-open"])
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["profile (n=2)", "lin (n=2)"]    # no runs: no line
    assert list(ax.lines[1].get_ydata()) == [20.0, 100.0]
    with pytest.raises(ValueError, match="no task to plot"):
        plot_curves_by_settings([("profile", cfg)], [])


def test_curves_by_method_keep_each_methods_colour_across_tasks(tmp_path):
    from relam.report import METHOD_ORDER, eval_curves
    from relam.viz import plot_curves_by_method

    cfg = load_config("smoke", {"results_dir": str(tmp_path)})
    runs = {("door-open", "relam-gt"): (0.1, 0.3), ("PickCube", "relam"): (0.4, 0.8),
            ("PickCube", "relam-gt"): (0.6, 1.0)}
    for (task, method), rates in runs.items():
        rd = tmp_path / "runs" / task / method / "seed0"
        rd.mkdir(parents=True)
        (rd / "eval.csv").write_text("step,success_rate,last_subgoal_rate\n"
                                     + "".join(f"{1000 * (i + 1)},{r},0\n" for i, r in enumerate(rates)))
    fig = plot_curves_by_method(eval_curves(cfg.out, cfg), ["door-open", "PickCube"], cfg, title="t")
    door, pick = fig.axes[:2]
    assert [line.get_label() for line in door.lines] == ["relam-gt (n=1)"]
    assert sorted(line.get_label() for line in pick.lines) == ["relam (n=1)", "relam-gt (n=1)"]
    gt_colour = f"C{METHOD_ORDER.index('relam-gt')}"
    assert door.lines[0].get_color() == gt_colour
    assert next(line for line in pick.lines if line.get_label().startswith("relam-gt")).get_color() == gt_colour
    assert list(door.lines[0].get_ydata()) == pytest.approx([10.0, 30.0])
    assert door.get_xlabel() == "env steps" and pick.get_xlabel() == "gradient steps"
    with pytest.raises(ValueError, match="no task to plot"):
        plot_curves_by_method(eval_curves(cfg.out, cfg), [], cfg)
