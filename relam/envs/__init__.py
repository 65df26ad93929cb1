"""Task registry: ``make_task(name)`` builds one of the paper's five tasks behind the ``Task`` interface."""
from __future__ import annotations

from relam.envs.base import CameraSpec, Task, TaskSpec, is_count  # noqa: F401
from relam.envs.camera import CameraParams  # noqa: F401

METAWORLD_TASKS = ("drawer-open", "door-open", "button-press-wall")
MANISKILL_TASKS = ("PushCube", "PickCube")
TASKS = METAWORLD_TASKS + MANISKILL_TASKS


def check_task_name(name: str) -> str:
    if name not in TASKS:
        import difflib
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(TASKS)}")
    return name


def task_spec(name: str) -> TaskSpec:
    check_task_name(name)
    if name in METAWORLD_TASKS:
        from relam.envs.metaworld_tasks import METAWORLD_SPECS
        return METAWORLD_SPECS[name]
    from relam.envs.maniskill_tasks import MANISKILL_SPECS
    return MANISKILL_SPECS[name]


def make_task(name: str, image_size: int = 128, camera: CameraSpec | None = None,
              max_steps: int | None = None, **kwargs) -> Task:
    """Build a task. ``camera`` overrides the task's default fixed camera, ``max_steps`` (None: the task's own) its
    episode limit."""
    check_task_name(name)
    if max_steps is not None and not is_count(max_steps):
        raise ValueError(f"max_steps must be a positive whole number of env steps or None (the task's own limit), "
                         f"got {max_steps!r}")
    if name in METAWORLD_TASKS:
        from relam.envs.metaworld_tasks import MetaWorldTask
        return MetaWorldTask(name, image_size=image_size, camera=camera, max_steps=max_steps, **kwargs)
    from relam.envs.maniskill_tasks import ManiSkillTask
    return ManiSkillTask(name, image_size=image_size, camera=camera, max_steps=max_steps, **kwargs)
