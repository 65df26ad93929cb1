"""Process-wide rendering setup, done once before any simulator is imported.

MuJoCo renders offscreen through EGL (software llvmpipe on CPU machines). SAPIEN (ManiSkill) needs a
Vulkan device; on Debian 12 the system lavapipe (Mesa 22) is rejected, so ``scripts/bootstrap.sh``
unpacks Mesa 25's lavapipe into ``<repo>/.cache/mesa`` and we point the Vulkan loader at it here.
Users with a GPU keep their own driver: an already-set ``VK_ICD_FILENAMES`` is never overridden.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MESA_ICD = Path(os.environ.get("RELAM_MESA_DIR", REPO_ROOT / ".cache" / "mesa")) / "lvp_icd.json"


class VulkanUnavailableError(RuntimeError):
    pass


def configure_rendering() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    if "PYOPENGL_PLATFORM" not in os.environ and os.environ["MUJOCO_GL"] == "egl":
        os.environ["PYOPENGL_PLATFORM"] = "egl"
    if not os.environ.get("VK_ICD_FILENAMES") and MESA_ICD.exists():
        os.environ["VK_ICD_FILENAMES"] = str(MESA_ICD)


def vulkan_help(detail: str = "") -> str:
    return (
        "ManiSkill (SAPIEN) found no usable Vulkan device"
        + (f" ({detail})" if detail else "")
        + ". Fix: run ./scripts/bootstrap.sh (as root it installs libvulkan1 + mesa-vulkan-drivers and unpacks "
        "Mesa 25 lavapipe into .cache/mesa), or point VK_ICD_FILENAMES at your GPU's Vulkan ICD json. "
        f"Currently VK_ICD_FILENAMES={os.environ.get('VK_ICD_FILENAMES', '<unset>')!r}."
    )


configure_rendering()
