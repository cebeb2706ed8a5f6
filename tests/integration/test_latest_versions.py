"""The latest-versions check: lock parsing, the differences it prints and the release it blames."""

import os

import latest_versions as lv
from repo_paths import ROOT, TESTS

LOCK = """\
#
# make lock
#
accelerate==1.16.0
    # via vlp (setup.py)
Pillow==13.0.0
torch==2.13.0+cpu
    # via
    #   -r requirements/lock.in
transformers[torch]==5.25.0 ; python_version >= "3.10"
--find-links /somewhere
"""


def test_lock_lines_become_canonical_names_and_versions_without_local_labels():
    assert lv.parse_lock(LOCK) == {
        "accelerate": "1.16.0",
        "pillow": "13.0.0",
        "torch": "2.13.0",
        "transformers": "5.25.0",
    }


def test_differences_list_newer_and_unlocked_packages_most_likely_culprit_first():
    locked = {"accelerate": "1.16.0", "pillow": "13.0.0", "torch": "2.13.0", "transformers": "5.25.0"}
    installed = {
        "accelerate": "1.16.0",
        "pillow": "13.1.0",
        "torch": "2.13.0",
        "transformers": "5.26.0",
        "vlp": "0.1.0",
        "zzz-new-dependency": "1.0",
    }
    assert lv.differences(locked, installed) == [
        ("transformers", "5.25.0", "5.26.0"),
        ("pillow", "13.0.0", "13.1.0"),
        ("zzz-new-dependency", "-", "1.0"),
    ]


def test_the_culprit_is_the_one_package_whose_locked_version_passes_and_every_trial_is_undone():
    environment = {"transformers": "5.26.0", "pillow": "13.1.0", "numpy": "2.5.0"}
    original = dict(environment)
    trials = []

    def install(name, version):
        environment[name] = version

    def rerun_failed():
        trials.append(dict(environment))
        return environment["pillow"] == "13.0.0"  # only the new Pillow breaks the suite

    suspects = [("transformers", "5.25.0", "5.26.0"), ("pillow", "13.0.0", "13.1.0"), ("numpy", "2.4.6", "2.5.0")]
    assert lv.find_culprit(suspects, rerun_failed, install) == ("pillow", "13.0.0", "13.1.0")
    assert trials == [{**original, "transformers": "5.25.0"}, {**original, "pillow": "13.0.0"}]
    assert environment == original
    assert lv.find_culprit([("numpy", "2.4.6", "2.5.0"), ("new", "-", "1.0")], lambda: False, install) is None
    assert environment == original


def test_the_lock_in_the_repository_pins_every_requirement_of_setup_py():
    """Every requirement the installed vlp declares (install_requires; test, captioning and lint extras) is locked."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    root = ROOT
    with open(os.path.join(root, "requirements", "lock.txt"), encoding="utf-8") as handle:
        locked = lv.parse_lock(handle.read())
    declared = [Requirement(line) for line in requires("vlp") or []]
    wanted = [
        req.name
        for req in declared
        if req.marker is None or any(req.marker.evaluate({"extra": extra}) for extra in ("test", "captioning", "lint"))
    ]
    assert "transformers" in wanted and "pytest" in wanted and "ruff" in wanted, wanted
    missing = [name for name in wanted if lv.canonical(name) not in locked]
    assert not missing, f"setup.py requirements not in requirements/lock.txt (run `make lock`): {missing}"


def test_a_failure_that_stays_with_every_locked_version_back_blames_no_release_and_undoes_the_trial():
    environment = {"transformers": "5.26.0", "markdown": "3.11.4", "extra": "1.0"}
    original = dict(environment)
    seen = []

    def install(name, version):
        environment[name] = version

    def rerun_failed(broken_by=None):
        seen.append(dict(environment))
        return broken_by is not None and environment[broken_by[0]] == broken_by[1]

    rows = [("transformers", "5.25.0", "5.26.0"), ("markdown", "3.10", "3.11.4"), ("extra", "-", "1.0")]
    assert lv.fails_at_lock(rows, rerun_failed, install)  # a fault of VLP's own: nothing passes
    assert seen == [{"transformers": "5.25.0", "markdown": "3.10", "extra": "1.0"}] and environment == original
    assert not lv.fails_at_lock(rows, lambda: rerun_failed(("transformers", "5.25.0")), install)
    assert environment == original


def _run_main(tmp_path, test_body: str):
    """latest_versions.main end to end: the real pytest command on a one-test folder, with a lock equal to this venv."""
    import subprocess
    import sys

    lock = tmp_path / "lock.txt"
    lock.write_text("".join(f"{name}=={version}\n" for name, version in sorted(lv.installed_versions().items())))
    (tmp_path / "test_one.py").write_text(test_body)
    script = os.path.join(TESTS, "latest_versions.py")
    return subprocess.run(
        [sys.executable, script, "--lock", str(lock), "--", "-q", str(tmp_path / "test_one.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )


def test_main_runs_pytest_with_its_cache_and_passes_when_the_tests_pass(tmp_path):
    done = _run_main(tmp_path, "def test_ok():\n    assert 1 + 1 == 2\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 package(s) differ" in done.stdout and "1 passed" in done.stdout
    assert "INTERNALERROR" not in done.stdout + done.stderr


def test_main_blames_no_release_when_nothing_differs_from_the_lock(tmp_path):
    done = _run_main(tmp_path, "def test_bad():\n    assert 1 + 1 == 3\n")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILS WITH THE LOCKED VERSIONS" in done.stdout
    assert "BROKEN BY" not in done.stdout
