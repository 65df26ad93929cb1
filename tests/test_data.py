"""Demo datasets: HDF5 round trip, clear errors on bad files/profiles, atomic writes and resumption."""
import h5py
import numpy as np
import pytest

import relam.data.demos as demos
from relam.config import ConfigError, load_config
from relam.data.store import DatasetFileError, EpisodeSet, sim_path


def _cfg(tmp_path, n=2, tasks=("drawer-open", "button-press-wall")):
    return load_config("smoke", {"results_dir": str(tmp_path / "res"), "env": {"tasks": list(tasks)},
                                 "demos": {"n_demos": n}})


def test_hdf5_round_trip_and_ground_truth_kept_apart(tmp_path):
    cfg = _cfg(tmp_path, n=2, tasks=["drawer-open"])
    summary = demos.collect_demos(cfg, "drawer-open", progress=False)
    assert summary["demos"] == 2 and not summary["skipped"]
    path = demos.demo_path(cfg, "drawer-open")
    # re-simulate demo 0 from its seed: frames must match what was stored, bit for bit
    from relam.data.rollout import rollout
    from relam.envs import make_task
    task = make_task("drawer-open", image_size=cfg.env.image_size)
    with EpisodeSet(path) as ds:
        rec = ds[0]
        ep = rollout(task, rec.seed, extra_after_success=cfg.demos.extra_frames_after_success)
        np.testing.assert_array_equal(rec.frames, ep.frames)
        assert rec.length == len(ep.frames) and rec.success and rec.first_success == ep.first_success
        assert rec.length - 1 == rec.first_success + 1 + cfg.demos.extra_frames_after_success
        assert rec.actions is None, "demo videos are action-free"
        gt = ds.groundtruth(0)
        np.testing.assert_allclose(gt["body_poses"], ep.groundtruth["body_poses"])
        np.testing.assert_array_equal(gt["seg0"], ep.groundtruth["seg0"])
        assert gt["masks0"].shape == (2, 128, 128)
        assert ds.attrs["prompts"] == ["robot arm", "green drawer"]
    task.close()
    with h5py.File(path) as f:  # ground truth is not in the file ReLAM reads
        g = f["ep_00000"]
        assert set(g.keys()) == {"frames"}
    with h5py.File(sim_path(path)) as f:
        assert {"body_poses", "depth0", "seg0", "masks0", "object_pos", "states"} <= set(f["ep_00000"].keys())


def test_truncated_hdf5_is_a_clear_error(tmp_path):
    cfg = _cfg(tmp_path, n=1, tasks=["button-press-wall"])
    demos.collect_demos(cfg, "button-press-wall", progress=False)
    path = demos.demo_path(cfg, "button-press-wall")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(DatasetFileError, match=r"truncated or corrupt.*delete it and rerun"):
        EpisodeSet(path)
    # a truncated file is not 'finished': the next run recollects it
    assert not demos.collect_demos(cfg, "button-press-wall", progress=False)["skipped"]
    assert len(EpisodeSet(path)) == 1


def test_interrupted_collection_keeps_finished_tasks_and_resumes(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, n=2)
    real = demos.rollout
    calls = {"n": 0}

    def flaky(task, *a, **k):
        calls["n"] += 1
        if task.spec.name == "button-press-wall" and calls["n"] >= 4:
            raise KeyboardInterrupt  # the user hits Ctrl-C in the middle of the second task
        return real(task, *a, **k)

    monkeypatch.setattr(demos, "rollout", flaky)
    demos.collect_demos(cfg, "drawer-open", progress=False)
    with pytest.raises(KeyboardInterrupt):
        demos.collect_demos(cfg, "button-press-wall", progress=False)
    out = demos.demo_path(cfg, "drawer-open").parent
    assert sorted(p.name for p in out.iterdir()) == ["drawer-open.h5", "drawer-open.sim.h5"], \
        "no partial files may be left behind, and the finished task must survive"
    monkeypatch.setattr(demos, "rollout", real)
    assert demos.collect_demos(cfg, "drawer-open", progress=False)["skipped"]
    again = demos.collect_demos(cfg, "button-press-wall", progress=False)
    assert not again["skipped"] and again["demos"] == 2
    # changed settings are not 'done': more demos requested -> recollected
    cfg.demos.n_demos = 3
    assert demos.collect_demos(cfg, "drawer-open", progress=False)["demos"] == 3


def test_unknown_profile_and_bad_keys_are_clear_errors():
    with pytest.raises(ConfigError, match=r"unknown profile 'fast'.*Available profiles: cpu, paper, smoke"):
        load_config("fast")
    with pytest.raises(ConfigError, match=r"unknown config key 'demos.n_demo'.*n_demos"):
        load_config("smoke", {"demos": {"n_demo": 3}})
    with pytest.raises(ValueError, match="unknown task 'PushCub'"):
        load_config("smoke", {"env": {"tasks": ["PushCub"]}})


def test_profiles_only_override():
    smoke, cpu, paper = (load_config(p) for p in ("smoke", "cpu", "paper"))
    assert smoke.demos.n_demos < cpu.demos.n_demos <= paper.demos.n_demos == 100
    assert paper.offline.n_expert == paper.offline.n_noisy == 100
    assert smoke.out.name == "smoke"


def test_object_motion_is_reported(tmp_path):
    cfg = _cfg(tmp_path, n=2, tasks=["drawer-open"])
    demos.collect_demos(cfg, "drawer-open", progress=False)
    m = demos.object_motion_px(demos.demo_path(cfg, "drawer-open"))
    assert m["threshold_px"] == pytest.approx(15.36)
    assert m["ok"] and m["min_px"] > 20  # the drawer-open camera was chosen for ~30 px


def test_a_tasks_own_number_of_demos_is_collected_extracted_and_refused_when_misspelt(tmp_path):
    from relam.models.unseen_demos import unseen_config
    from relam.perception.subgoals import SubgoalDataset, build_subgoal_dataset, subgoal_path

    over = {"results_dir": str(tmp_path / "res"), "env": {"tasks": ["button-press-wall", "drawer-open"]},
            "demos": {"n_demos": 2, "unseen": 1, "task_overrides": {"button-press-wall": {"n_demos": 3}}}}
    cfg = load_config("smoke", over)
    assert cfg.demos.for_task("drawer-open").n_demos == 2 and cfg.demos.for_task("button-press-wall").n_demos == 3
    assert demos.collect_demos(cfg, "button-press-wall", progress=False)["demos"] == 3
    build_subgoal_dataset(cfg, "button-press-wall", progress=False)
    data = SubgoalDataset.load(subgoal_path(cfg.out, "button-press-wall"))
    assert len(data.subgoals) == 3 and data.settings["n_demos"] == 3
    assert demos.collect_demos(cfg, "button-press-wall", progress=False)["skipped"]
    # the override is part of what the stored demos were made under: changing it collects them again
    fewer = load_config("smoke", {**over, "demos": {**over["demos"], "task_overrides": {}}})
    assert demos.collect_demos(fewer, "button-press-wall", progress=False)["demos"] == 2
    # a task's own training demos do not set its number of unseen ones
    assert unseen_config(cfg).demos.for_task("button-press-wall").n_demos == 1
    with pytest.raises(ConfigError, match="n_demo"):
        load_config("smoke", {"demos": {"task_overrides": {"button-press-wall": {"n_demo": 3}}}})
    with pytest.raises(ValueError, match="unknown task|button-press-wal"):
        load_config("smoke", {"demos": {"task_overrides": {"button-press-wal": {"n_demos": 3}}}})
