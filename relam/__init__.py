"""relam: reference implementation of ReLAM (Learning Anticipation Model for Rewarding Visual Robotic
Manipulation). Importing the package configures offscreen rendering (see ``relam.platform``) so that it
happens before MuJoCo or SAPIEN are imported."""
from relam import platform as _platform  # noqa: F401  (side effect: rendering env vars)

__version__ = "0.1.0"
