"""A fresh clone with nothing beside it: the project reads and names nothing outside its own folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Paths of the development machines (written in pieces so that this file does not match itself).
OUTSIDE = ["../" + "shared", "/work/" + "shared", "shared" + "/spec"]


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name for name in names.decode().split("\0") if name]


def test_no_tracked_file_names_a_folder_outside_the_clone():
    found = []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files (figures)
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(REPO)}:{number}: names {word!r}" for word in OUTSIDE if word in line]
    assert not found, "\n".join(found)


@pytest.mark.slow
def test_a_clone_in_an_empty_folder_passes_the_tests_that_read_its_data(tmp_path):
    tracked_files()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    clone = tmp_path / "mae-dfer"  # tmp_path holds nothing else: no sibling folders
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(REPO), str(clone)], check=True, timeout=120)
    subprocess.run(["git", "checkout", "--quiet", "--detach", head.stdout.strip()], cwd=clone, check=True, timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mae-dfer"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of this checkout on the path
    # the key lists (tests/data/keys) and the file form of a preprocess script, with this interpreter
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_spec_parity.py::test_full_size_keys_match_original_checkpoints",
                           "tests/test_fresh_clone.py::test_no_tracked_file_names_a_folder_outside_the_clone"],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 passed" in done.stdout, done.stdout[-3000:]
    done = subprocess.run([sys.executable, "preprocess/check.py", "--help"], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr
