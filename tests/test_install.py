"""`pip install .` (a wheel, not an editable install): the main job runs from another folder, and what it saves loads.

Everything the project reads at run time (metric modules, the card template) must come from the installed packages;
the bundler, living in site-packages beside `transformers`, must bundle only the project's code.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fresh_process import run_outside_project

REPO_ROOT = Path(__file__).resolve().parents[1]

# Runs the main job from the installed copy only: the editable install's import hook is dropped, and every project
# package must resolve to the wheel's files.
INSTALLED_RUN = """
import runpy
import sys
from importlib.util import find_spec

site = sys.argv[1]
sys.meta_path = [finder for finder in sys.meta_path if not getattr(finder, "__module__", "").startswith("__editable__")]
sys.path.insert(0, site)
for package in ("configuration", "modeling", "processing", "train", "data", "hub", "metrics"):
    origin = find_spec(package).submodule_search_locations[0]
    assert origin.startswith(site), f"{package} resolves to {origin}, not the installed wheel"
sys.argv = ["vlp", *sys.argv[2:]]
runpy.run_module("train.vlp", run_name="__main__")
"""

LOAD = """
import json
import sys

import torch
from transformers import AutoModel, AutoProcessor

folder, output = sys.argv[1:]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    text = model.get_text_features(**processor(text=["a red circle"]))
json.dump({"shape": list(text.shape), "module": type(model).__module__}, open(output, "w"))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install")
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    # No build isolation and no dependencies: nothing is downloaded; what the wheel contains is what is tested.
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", root / "wheel", REPO_ROOT], check=True, cwd=root)
    (wheel,) = (root / "wheel").glob("*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", root / "site", wheel], check=True, cwd=root)
    return root / "site"


def test_wheel_ships_the_metric_modules_and_card_template(installed):
    for name in ("retrieval", "bleu", "wer", "rouge", "cider"):
        assert (installed / "metrics" / name / f"{name}.py").is_file()
        assert (installed / "metrics" / name / "README.md").is_file()
    assert (installed / "hub" / "model_card_template.md").is_file()


def test_installed_main_job_trains_evaluates_saves_and_loads(installed, tmp_path):
    output_dir = tmp_path / "run"
    arguments = [
        "--output_dir", output_dir, "--num_train", "32", "--num_eval", "16", "--image_size", "32",
        "--per_device_train_batch_size", "16", "--max_train_steps", "2", "--eval_steps", "2",
        "--report_to", "none", "--cpu_threads", "1",
    ]  # fmt: skip
    run_outside_project(INSTALLED_RUN, [installed, *arguments], tmp_path)
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert "dim128/v2t_R@1" in results["metrics"]
    bundled = {path.name for path in (output_dir / "final").glob("*.py")}
    model_code = {path.name for package in ("configuration", "modeling", "processing") for path in (REPO_ROOT / package).glob("*.py")}
    assert bundled and bundled <= model_code, f"bundled from outside the model packages: {bundled - model_code}"
    run_outside_project(LOAD, [output_dir / "final", tmp_path / "loaded.json"], tmp_path)
    loaded = json.loads((tmp_path / "loaded.json").read_text())
    assert loaded["shape"][0] == 1 and loaded["module"].startswith("transformers_modules.")
