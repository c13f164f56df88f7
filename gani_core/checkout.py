"""The source checkout gani runs from: its root, the folders the flows and benchmarks default to, and the code
version that MLflow runs record.

    from gani_core.checkout import REPO, code_version
    REPO / "examples" / "shapes"    # the folders below are defined here once
    code_version()                  # "0.1.0+g1a2b3c4d5e" (".dirty" when tracked files changed)

gani is installed editable from its checkout (scripts/setup.sh), so ``REPO`` is the folder holding gani_core/.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import gani_core

REPO = Path(__file__).resolve().parents[1]
SHAPES_EXAMPLES = REPO / "examples" / "shapes"  # held-out images of the built-in generator's domain
PHOTO_EXAMPLES = REPO / "examples" / "photos"   # photos: images the built-in generator cannot render
LOCAL_OUT = REPO / "out"                        # the flows' default outputs, and their sqlite MLflow store when the
                                                # output is not a local folder


@functools.cache
def code_version() -> str:
    """gani_core's version, plus the git commit of this checkout when there is one (``0.1.0+g1a2b3c4``)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return gani_core.__version__
    return f"{gani_core.__version__}+g{sha}{'.dirty' if dirty else ''}"
