"""Run Python in a fresh process where the `vlp` package cannot be imported (as on a machine without VLP).

An editable install makes `vlp` importable from everywhere, so a meta-path blocker refuses it explicitly, and the
process starts from an empty temporary directory with a private modules cache and the hubs offline.
"""

import os
import subprocess
import sys
import textwrap

BLOCKER = """
import sys
class _BlockVLP:
    def find_spec(self, name, path=None, target=None):
        if name == "vlp" or name.startswith("vlp."):
            raise ImportError(f"import of {name} is blocked: this process must not see the vlp package")
        return None
sys.meta_path.insert(0, _BlockVLP())
for _name in [m for m in sys.modules if m == "vlp" or m.startswith("vlp.")]:
    del sys.modules[_name]
try:
    import vlp.processing  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the import blocker did not block vlp")
"""


def run_blocked(code, workdir, timeout=300):
    """Runs `code` with `vlp` blocked, from `workdir`; returns stdout. Raises with stderr on failure."""
    os.makedirs(workdir, exist_ok=True)
    script = os.path.join(workdir, "blocked_script.py")
    with open(script, "w", encoding="utf-8") as handle:
        handle.write(BLOCKER + "\n" + textwrap.dedent(code))
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_MODULES_CACHE=os.path.join(workdir, "modules_cache"),
        PYTHONPATH="",
    )
    result = subprocess.run(
        [sys.executable, script], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"blocked subprocess failed:\n{result.stderr[-6000:]}")
    return result.stdout + result.stderr
