import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import relam  # noqa: E402,F401  (configures rendering before any simulator import)

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def task_cache():
    """One live task per name for the whole session: ManiSkill envs take ~8 s to build."""
    from relam.envs import make_task
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = make_task(name, image_size=128)
        return cache[name]

    yield get
    for t in cache.values():
        t.close()


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAM_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"
