"""Folders mounted read-only or full, in a mount namespace of the test's own (root and unshare -m)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import pytest


def can_mount() -> bool:
    """Whether this process may make its own mounts (root, and unshare allowed here)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not can_mount(), reason="needs root and `unshare -m` to mount a folder")


def in_mount_namespace(setup: str) -> list[str]:
    """`python -m func` in a mount namespace of its own, after the shell commands `setup`."""
    return ["unshare", "-m", "sh", "-c", f"{setup} && exec {shlex.quote(sys.executable)} -m func"]
