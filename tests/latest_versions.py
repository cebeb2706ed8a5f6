"""Run the suite with the newest versions setup.py allows and, when it fails, name the release that broke it.

    .venv-latest/bin/python tests/latest_versions.py --lock requirements/lock.txt [-- PYTEST ARGUMENTS]

Run by the interpreter of the environment under test (`make test-latest` builds `.venv-latest`). It prints every
installed package whose version differs from the lock, runs pytest, and on a failure first reruns the failed tests
with every locked version back (still failing: no release is to blame), then puts the locked version of one
differing package back at a time (`pip install --no-deps`, most likely culprit first), reruns only the failed tests
and restores the newer version. The first package whose locked version makes the failures pass is reported as

    BROKEN BY: transformers 5.26.0 (the lock has 5.25.0)

Exit status: pytest's (5, no tests collected, becomes 1).
Only the standard library is used: this file runs before anything else is known to work.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import time

# The packages VLP builds on, in the order a failure is most likely to come from them; the rest follow by name.
LIKELY_FIRST = (
    "transformers",
    "accelerate",
    "datasets",
    "huggingface-hub",
    "tokenizers",
    "safetensors",
    "evaluate",
    "torch",
    "numpy",
    "pyarrow",
    "scipy",
    "pillow",
    "pytest",
    "pytest-timeout",
)
MAX_SUSPECTS = 10  # reruns of the failed tests at most; the remaining differences are listed, not tried


def canonical(name: str) -> str:
    """PEP 503 normal form: lower case, runs of -, _ and . as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    """{canonical name: version} of the `name==version` lines of a pip-compile lock (comments and options skipped;
    a local version label such as +cpu is dropped)."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            pins[canonical(match.group(1))] = match.group(3).split("+", 1)[0]
    return pins


def installed_versions() -> dict[str, str]:
    """{canonical name: version} of this interpreter's distributions (local version labels dropped)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[canonical(name)] = dist.version.split("+", 1)[0]
    return found


def differences(locked: dict[str, str], installed: dict[str, str], skip=("vlp",)) -> list[tuple[str, str, str]]:
    """(name, locked version, installed version) of every locked package installed at another version, and of
    every installed package the lock does not hold (locked version "-"); most likely culprits first."""
    names = (set(locked) | set(installed)) - set(skip)
    rows = [
        (name, locked.get(name, "-"), installed[name])
        for name in names
        if name in installed and locked.get(name) != installed[name]
    ]
    order = {name: i for i, name in enumerate(LIKELY_FIRST)}
    return sorted(rows, key=lambda row: (order.get(row[0], len(order)), row[0]))


def fails_at_lock(rows, rerun_failed, install) -> bool:
    """Whether the failed tests still fail with every locked package put back at once (packages the lock does not
    hold stay); everything is restored to its newer version afterwards. True means no new release is to blame."""
    back = [(name, old, new) for name, old, new in rows if old != "-"]
    try:
        for name, old, _ in back:
            install(name, old)
        return not rerun_failed()
    finally:
        for name, _, new in back:
            install(name, new)


def find_culprit(suspects, rerun_failed, install) -> tuple[str, str, str] | None:
    """The first suspect (name, locked, newer) whose locked version makes `rerun_failed()` pass, or None.

    `install(name, version)` puts one version in place; every suspect is restored to its newer version after its
    trial, so that each trial differs from the failing environment by exactly one package."""
    for name, old, new in suspects:
        if old == "-":
            continue  # not in the lock: nothing to go back to
        install(name, old)
        try:
            passed = rerun_failed()
        finally:
            install(name, new)
        if passed:
            return name, old, new
    return None


def _pip_install(name: str, version: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", f"{name}=={version}"], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", required=True, help="the lock of tested versions (requirements/lock.txt)")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest (default: -q tests)")
    args = parser.parse_args(argv)
    with open(args.lock, encoding="utf-8") as handle:
        locked = parse_lock(handle.read())
    rows = differences(locked, installed_versions())
    print(f"newest allowed versions: {len(rows)} package(s) differ from {args.lock}")
    for name, old, new in rows:
        print(f"  {name:28s} lock {old:14s} now {new}")

    # An absolute, normalised folder: pytest refuses cache keys that resolve outside a cache_dir given with "..".
    cache = os.path.abspath(os.path.join(os.path.dirname(sys.executable), "..", "pytest-cache"))
    base = [sys.executable, "-m", "pytest", "-p", "cacheprovider", "-o", f"cache_dir={cache}"]
    pytest_args = args.pytest_args or ["-q", "tests"]
    start = time.monotonic()
    rc = subprocess.run(base + pytest_args).returncode
    print(f"latest-versions suite: exit {rc} after {time.monotonic() - start:.0f} s")
    if rc == 0:
        return 0
    if rc == 5:
        print("pytest collected no tests", file=sys.stderr)
        return 1
    if rc in (2, 3, 4):
        print(f"pytest could not run the suite (exit {rc}: interrupted, internal or usage error); nothing to bisect")
        return rc
    if not rows:
        print("FAILS WITH THE LOCKED VERSIONS: no package differs from the lock, so no new release is to blame")
        return rc

    def rerun_failed() -> bool:
        return (
            subprocess.run(
                base + ["-q", "-x", "--lf", "--lfnf=none"] + [a for a in pytest_args if a != "-q"],
                stdout=subprocess.DEVNULL,
            ).returncode
            == 0
        )

    if fails_at_lock(rows, rerun_failed, _pip_install):
        print(
            "FAILS WITH THE LOCKED VERSIONS TOO: with every locked version put back the failed tests still fail, "
            "so no new release is to blame (the locked suite shows the same failure)"
        )
        return rc
    suspects = rows[:MAX_SUSPECTS]
    culprit = find_culprit(suspects, rerun_failed, _pip_install)
    if culprit is not None:
        name, old, new = culprit
        print(f"BROKEN BY: {name} {new} (the lock has {old}): with {name}=={old} the failed tests pass")
    else:
        tried = ", ".join(f"{name} {new}" for name, _, new in suspects)
        print(f"BROKEN BY: no single package; going back one at a time did not help for: {tried}")
        if len(rows) > len(suspects):
            print("  not tried: " + ", ".join(f"{name} {new}" for name, _, new in rows[len(suspects) :]))
    return rc


if __name__ == "__main__":
    sys.exit(main())
