"""Held-out errors on unseen demos (relam.models.unseen_demos): where they come from and that they are measured as
training measures its own held-out demos."""
import dataclasses
import json

import numpy as np
import pytest

from relam.config import load_config
from relam.data.demos import collect_demos, demo_path
from relam.models.train_anticipation import train_profile
from relam.models.unseen_demos import collect_unseen, errors_on_demos, unseen_error_rows
from relam.perception.subgoals import SubgoalDataset, build_subgoal_dataset, subgoal_path

TASK = "button-press-wall"


def test_unseen_demos_come_from_their_own_seeds_and_are_measured_as_the_runs_held_out_demos(tmp_path):
    cfg = load_config("smoke", {"results_dir": str(tmp_path), "env": {"tasks": [TASK]},
                                "demos": {"n_demos": 4, "unseen": 2},
                                "anticipation": {"multitask": False, "val_fraction": 0.5}})
    collect_demos(cfg, TASK, progress=False)
    build_subgoal_dataset(cfg, TASK, progress=False)
    metrics = train_profile(cfg, progress=False)[TASK]
    run = cfg.out / "anticipation" / TASK
    train_file = demo_path(cfg, TASK).read_bytes()

    ds = SubgoalDataset.load(subgoal_path(cfg.out, TASK), TASK)
    held = np.random.default_rng(cfg.anticipation.seed).permutation(4)[:2]   # the split train() used
    own = errors_on_demos(run, ds, held)
    assert own["n"] == 2 and sorted(own["seeds"]) == sorted(int(ds.seeds[i]) for i in held)
    for key in ("x0_px", "subgoal_px", "len_err"):
        assert own[key] == pytest.approx(metrics["val"]["per_task"][TASK][key], rel=1e-5)

    unseen = collect_unseen(cfg, TASK, progress=False)
    assert len(unseen.subgoals) == 2 and min(unseen.seeds) >= cfg.demos.unseen_seed_offset
    assert not set(unseen.seeds) & set(ds.seeds)
    assert demo_path(cfg, TASK).read_bytes() == train_file        # the training demos are left alone
    assert (cfg.out / "unseen_demos" / "subgoals" / f"{TASK}.h5").exists()
    errs = errors_on_demos(run, unseen, train_ds=ds)
    assert errs["n"] == 2 and np.isfinite([errs["x0_px"], errs["subgoal_px"]]).all() and errs["x0_px"] > 0
    # per keypoint, and the error of the run's training demos' mean x0
    assert len(errs["x0_px_per_keypoint"]) == ds.num_keypoints
    assert np.mean(errs["x0_px_per_keypoint"]) == pytest.approx(errs["x0_px"], rel=1e-5)
    trained = np.stack([ds.subgoals[i][0] for i in range(4) if i not in held]).mean(0)
    by_hand = np.mean([np.linalg.norm(trained - s[0], axis=-1).mean() for s in unseen.subgoals]) * cfg.env.image_size
    assert errs["x0_px_mean"] == pytest.approx(by_hand, rel=1e-5)
    with pytest.raises(ValueError, match="subgoal dataset"):
        errors_on_demos(run, unseen, train_ds=dataclasses.replace(ds, task="drawer-open"))
    stamp = (cfg.out / "unseen_demos" / "demos" / f"{TASK}.h5").stat().st_mtime_ns
    collect_unseen(cfg, TASK, progress=False)                     # a rerun reuses them
    assert (cfg.out / "unseen_demos" / "demos" / f"{TASK}.h5").stat().st_mtime_ns == stamp
    assert json.loads((run / "metrics.json").read_text())["val"]["x0_px"] == metrics["val"]["x0_px"]
    rows = unseen_error_rows(cfg, {TASK: metrics}, progress=False)   # notebook 04's table: one row per run and task
    assert len(rows) == 1 and rows[0]["n unseen"] == 2 and rows[0]["n_val"] == metrics["n_val"]
    assert rows[0]["x0 px, unseen"] == pytest.approx(errs["x0_px"])
    assert rows[0]["x0 px, unseen, mean x0"] == pytest.approx(errs["x0_px_mean"])
    assert rows[0]["x0 px per keypoint, unseen"] == [round(x, 1) for x in errs["x0_px_per_keypoint"]]
    assert rows[0]["subgoal px, split"] == metrics["val"]["per_task"][TASK]["subgoal_px"]
    assert (cfg.out / "unseen_demos" / "demos" / f"{TASK}.h5").stat().st_mtime_ns == stamp
    cfg.demos.unseen = 0
    assert unseen_error_rows(cfg, {TASK: metrics}) == []
    cfg.demos.unseen = 2

    unseen.task = "drawer-open"
    with pytest.raises(ValueError, match="trained on"):
        errors_on_demos(run, unseen)
    with pytest.raises(ValueError, match="demos.unseen"):
        collect_unseen(load_config("smoke", {"results_dir": str(tmp_path), "demos": {"unseen": 0}}), TASK,
                       progress=False)
