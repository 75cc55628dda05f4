"""Run a script in a fresh interpreter, outside the repository, where the project's own packages cannot be imported.

This is how a Hub user loads a checkpoint: everything must come from the checkpoint folder.
"""

import os
import subprocess
import sys
from pathlib import Path

PROJECT_PACKAGES = ("configuration", "modeling", "processing")

_PREAMBLE = """
import importlib.util
import sys

# The project is pip-installed in editable mode; drop that import hook so only the checkpoint can supply the code.
sys.meta_path = [finder for finder in sys.meta_path if not getattr(finder, "__module__", "").startswith("__editable__")]
for package in {packages!r}:
    assert importlib.util.find_spec(package) is None, f"{{package}} is importable; the check would prove nothing"
"""


def run_outside_project(
    script: str, arguments: list[str], tmp_path: Path, packages: tuple[str, ...] = PROJECT_PACKAGES
) -> None:
    """Run `script` with `arguments` as `sys.argv[1:]`; fail with its stderr when it exits non-zero."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir(exist_ok=True)
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", _PREAMBLE.format(packages=packages) + script, *map(str, arguments)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
