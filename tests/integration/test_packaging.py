"""A regular (non-editable) install holds every file of the package folders: the wheel built from setup.py lists
each source, config, schema, metric module and card template under `vlp/`."""

import os
import shutil
import subprocess
import sys
import zipfile

from repo_paths import ROOT

FOLDERS = ("modeling_vlp", "processing", "training", "model_cards")
KINDS = (".py", ".yaml", ".json", ".md")


def test_the_wheel_holds_every_file_of_the_package_folders(tmp_path):
    # Built from a copy: a build/ folder left in the checkout would hand stale files to the wheel.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in FOLDERS:
        shutil.copytree(os.path.join(ROOT, folder), source / folder, ignore=ignore)
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = os.listdir(tmp_path / "dist")
    packed = set(zipfile.ZipFile(tmp_path / "dist" / wheel).namelist())
    expected = set()
    for folder in FOLDERS:
        for directory, subdirectories, files in os.walk(os.path.join(ROOT, folder)):
            subdirectories[:] = [d for d in subdirectories if d != "__pycache__"]
            for name in files:
                if name.endswith(KINDS):
                    relative = os.path.relpath(os.path.join(directory, name), ROOT)
                    expected.add("vlp/" + relative.replace(os.sep, "/"))
    assert expected and not expected - packed, sorted(expected - packed)
