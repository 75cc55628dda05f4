"""The project's `evaluate` modules, one folder per metric (`<name>/<name>.py` and its `README.md`).

They ship as package data, so `metric_path` finds them through the installed `metrics` package, from a wheel as
well as from the source tree; load one with `evaluate.load(str(metric_path(name)))`, which works offline.
"""

from importlib.resources import files
from pathlib import Path


def metric_path(name: str) -> Path:
    """The folder of the shipped `evaluate` module `name` (e.g. "retrieval", "bleu")."""
    root = Path(files(__name__))
    folder = root / name
    if not (folder / f"{name}.py").is_file():
        available = sorted(path.name for path in root.iterdir() if (path / f"{path.name}.py").is_file())
        raise FileNotFoundError(
            f"No metric module {name!r} in {root} (shipped: {', '.join(available)}). If the folder exists in the "
            "source tree, reinstall the project so the installed copy has it."
        )
    return folder


__all__ = ["metric_path"]
