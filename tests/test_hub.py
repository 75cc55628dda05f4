"""Hub bundling, model cards and push, checked on the miniature project in tests/fixtures/toyproject."""

import ast
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitInfo, CommitOperationDelete, HfApi, ModelCard
from transformers import BertTokenizerFast
from transformers.dynamic_module_utils import get_relative_imports

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))

from fresh_process import run_outside_project  # noqa: E402
from toyproject.configuration.configuration_toy import ToyConfig  # noqa: E402
from toyproject.modeling.modeling_toy import ToyModel  # noqa: E402
from toyproject.modeling.modeling_toyabsolute import ToyAbsolute  # noqa: E402
from toyproject.processing.processing_toy import ToyProcessor  # noqa: E402
from toyproject.shadow.modeling_toy import ShadowToy  # noqa: E402

from hub import build_model_card, collect_source_files, push_to_hub, save_for_hub, verify_checkpoint  # noqa: E402
from hub.bundle import flatten_source  # noqa: E402
from hub.push import main as push_main  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "sign", "language"]
TEXT = ["hello sign language", "world"]
NUM_FRAMES = 10
CODE_FILES = {
    "configuration_toy.py",
    "modeling_toy.py",
    "modeling_toyblocks.py",
    "processing_toy.py",
    "processing_toyframes.py",
}
CHECKPOINT_FILES = CODE_FILES | {
    "config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "README.md",
}

LOAD_SCRIPT = """
import torch
from transformers import AutoConfig, AutoModel, AutoProcessor

checkpoint, output_path, text, num_frames = sys.argv[1], sys.argv[2], sys.argv[3].split("|"), int(sys.argv[4])
config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
inputs = processor(text, num_frames=num_frames)
with torch.no_grad():
    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
torch.save(
    {
        "classes": [type(obj).__module__ + "." + type(obj).__name__ for obj in (config, model, processor)],
        "max_frames": processor.max_frames,
        "input_ids": inputs["input_ids"],
        "frame_indices": inputs["frame_indices"],
        "last_hidden_state": outputs.last_hidden_state,
        "pooler_output": outputs.pooler_output,
    },
    output_path,
)
"""


@pytest.fixture(scope="module")
def toy_model() -> ToyModel:
    torch.manual_seed(0)
    return ToyModel(ToyConfig(vocab_size=len(VOCAB))).eval()


@pytest.fixture(scope="module")
def toy_processor(tmp_path_factory) -> ToyProcessor:
    vocab_file = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return ToyProcessor(BertTokenizerFast(vocab=str(vocab_file)), max_frames=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, toy_model, toy_processor) -> Path:
    return save_for_hub(toy_model, toy_processor, tmp_path_factory.mktemp("saved") / "toy-checkpoint")


@pytest.fixture
def checkpoint_copy(checkpoint, tmp_path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / "toy-checkpoint"))


def test_collect_source_files_follows_relative_imports():
    files = collect_source_files(ToyModel, ToyProcessor)
    assert set(files) == CODE_FILES
    fixtures = Path(__file__).resolve().parent / "fixtures" / "toyproject"
    assert files["configuration_toy.py"] == fixtures / "configuration" / "configuration_toy.py"
    assert files["modeling_toyblocks.py"] == fixtures / "modeling" / "modeling_toyblocks.py"
    assert collect_source_files(ToyConfig()) == {"configuration_toy.py": files["configuration_toy.py"]}


def test_plain_import_of_a_project_module_raises():
    with pytest.raises(ValueError, match=r"`import toyproject\.modeling\.modeling_toyblocks` of a project module"):
        collect_source_files(ToyAbsolute)


def test_absolute_from_import_of_a_project_module_is_flattened():
    source = "import torch\nfrom toyproject.modeling.modeling_toyblocks import ToyBlock\nfrom transformers import AutoModel\n"
    assert flatten_source(source, frozenset({"toyproject"})) == (
        "import torch\nfrom .modeling_toyblocks import ToyBlock\nfrom transformers import AutoModel\n"
    )


def test_packages_beside_the_project_are_not_bundled(tmp_path):
    """Installed, the project's packages sit in site-packages beside `transformers`: only the listed packages and
    those of the saved classes are project code, whatever else the folder holds."""
    fixtures = Path(__file__).resolve().parent / "fixtures"
    assert (fixtures / "toyproject" / "shadow").is_dir()
    source = "from shadow.modeling_toy import ShadowToy\nfrom transformers.utils import logging\n"
    assert flatten_source(source, frozenset({"toyproject"})) == source
    assert set(collect_source_files(ToyModel)) <= CODE_FILES


def test_flat_name_collision_raises():
    with pytest.raises(ValueError, match=r"would both be bundled as modeling_toy\.py"):
        collect_source_files(ToyModel, ShadowToy)


def test_flatten_source_rewrites_only_import_statements():
    source = (
        '"""Docs quoting `from ..pkg.mod import x` stay as written."""\n'
        "import os; from ..pkg.sub.mod_a import (\n"
        "    a,\n"
        "    b,\n"
        ")\n"
        "from .mod_b import c\n"
        "from transformers.utils import logging\n"
        "def f():\n"
        "    from .. . pkg.mod_c import d\n"
    )
    assert flatten_source(source) == (
        '"""Docs quoting `from ..pkg.mod import x` stay as written."""\n'
        "import os; from .mod_a import (\n"
        "    a,\n"
        "    b,\n"
        ")\n"
        "from .mod_b import c\n"
        "from transformers.utils import logging\n"
        "def f():\n"
        "    from .mod_c import d\n"
    )
    with pytest.raises(ValueError, match="cannot be flattened"):
        flatten_source("from . import mod\n")


def test_bundled_code_is_flat(checkpoint):
    assert {path.name for path in checkpoint.iterdir()} == CHECKPOINT_FILES
    modules = {name.removesuffix(".py") for name in CODE_FILES}
    for name in CODE_FILES:
        tree = ast.parse((checkpoint / name).read_text(encoding="utf-8"))
        imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
        relative = {(node.level, node.module) for node in imports if getattr(node, "level", 0)}
        assert relative <= {(1, module) for module in modules}, name
        assert not any("toyproject" in ast.unparse(node) for node in imports), name
        # what transformers' loader will look for is exactly what the file imports
        assert set(get_relative_imports(checkpoint / name)) == {module for _, module in relative}, name
    config = json.loads((checkpoint / "config.json").read_text())
    processor_config = json.loads((checkpoint / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_toy.ToyConfig", "AutoModel": "modeling_toy.ToyModel"}
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_toy.ToyProcessor"}
    assert ModelCard.load(checkpoint / "README.md").data.library_name == "transformers"  # placeholder card


def test_fresh_process_loads_the_checkpoint(checkpoint, toy_model, toy_processor, tmp_path):
    output_path = tmp_path / "outputs.pt"
    arguments = [checkpoint, output_path, "|".join(TEXT), NUM_FRAMES]
    run_outside_project(LOAD_SCRIPT, arguments, tmp_path, packages=("toyproject",))

    loaded = torch.load(output_path)
    assert [name.rpartition(".")[2] for name in loaded["classes"]] == ["ToyConfig", "ToyModel", "ToyProcessor"]
    assert all(name.startswith("transformers_modules.") for name in loaded["classes"])
    inputs = toy_processor(TEXT, num_frames=NUM_FRAMES)
    with torch.no_grad():
        expected = toy_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert loaded["max_frames"] == 3
    assert loaded["frame_indices"] == inputs["frame_indices"] == [0, 3, 6]
    assert torch.equal(loaded["input_ids"], inputs["input_ids"])
    assert torch.allclose(loaded["last_hidden_state"], expected.last_hidden_state, atol=1e-6)
    assert torch.allclose(loaded["pooler_output"], expected.pooler_output, atol=1e-6)


def test_save_replaces_an_existing_folder(toy_model, toy_processor, tmp_path):
    output_dir = tmp_path / "checkpoint"
    output_dir.mkdir()
    (output_dir / "stale.bin").write_bytes(b"old weights")
    assert save_for_hub(toy_model, toy_processor, output_dir, model_card="# Toy\n") == output_dir
    assert {path.name for path in output_dir.iterdir()} == CHECKPOINT_FILES
    assert (output_dir / "README.md").read_text() == "# Toy\n"
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint"]


@pytest.mark.parametrize("existing", [True, False], ids=["existing-folder", "new-folder"])
def test_failed_save_leaves_nothing_behind(toy_model, toy_processor, tmp_path, monkeypatch, existing):
    output_dir = tmp_path / "checkpoint"
    if existing:
        output_dir.mkdir()
        (output_dir / "model.safetensors").write_bytes(b"old weights")

    def save_then_fail(folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half written")
        raise RuntimeError("disk full")

    monkeypatch.setattr(toy_model, "save_pretrained", save_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        save_for_hub(toy_model, toy_processor, output_dir)
    assert [path.name for path in tmp_path.iterdir()] == (["checkpoint"] if existing else [])
    if existing:
        assert [path.name for path in output_dir.iterdir()] == ["model.safetensors"]
        assert (output_dir / "model.safetensors").read_bytes() == b"old weights"


def test_custom_sub_processor_is_refused(toy_model, toy_processor, tmp_path):
    class CustomTokenizer(BertTokenizerFast):
        pass

    processor = ToyProcessor(CustomTokenizer(vocab=toy_processor.tokenizer.get_vocab()))
    with pytest.raises(NotImplementedError, match="ToyProcessor.tokenizer is a CustomTokenizer"):
        save_for_hub(toy_model, processor, tmp_path / "checkpoint")
    assert list(tmp_path.iterdir()) == []


def test_extra_files_are_copied_beside_the_weights(toy_model, toy_processor, tmp_path):
    index = tmp_path / "captions.index"
    index.write_bytes(b"\x00faiss")
    output_dir = save_for_hub(toy_model, toy_processor, tmp_path / "checkpoint", extra_files={"captions.index": index})
    assert (output_dir / "captions.index").read_bytes() == b"\x00faiss"
    with pytest.raises(FileNotFoundError, match="Extra file 'absent.jsonl'"):
        save_for_hub(toy_model, toy_processor, tmp_path / "other", extra_files={"absent.jsonl": tmp_path / "absent"})
    with pytest.raises(ValueError, match="must be a plain file name"):
        save_for_hub(toy_model, toy_processor, tmp_path / "other", extra_files={"config.json": index})
    assert not (tmp_path / "other").exists()


def test_model_class_declares_its_auto_classes(toy_processor, tmp_path):
    class ToyCausalLM(ToyModel):
        hub_auto_classes = ("AutoModelForCausalLM",)

    ToyCausalLM.__module__ = ToyModel.__module__
    output_dir = save_for_hub(ToyCausalLM(ToyConfig(vocab_size=len(VOCAB))), toy_processor, tmp_path / "checkpoint")
    auto_map = json.loads((output_dir / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == auto_map["AutoModel"] == "modeling_toy.ToyCausalLM"


def test_extra_auto_classes(toy_model, toy_processor, tmp_path):
    output_dir = save_for_hub(
        toy_model, toy_processor, tmp_path / "checkpoint", extra_auto_classes={"AutoModelForCausalLM": ToyModel}
    )
    auto_map = json.loads((output_dir / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_toy.ToyModel"
    with pytest.raises(ValueError, match="'AutoTokenizer' is not a transformers AutoModel class"):
        save_for_hub(toy_model, toy_processor, tmp_path / "other", extra_auto_classes={"AutoTokenizer": ToyModel})


@pytest.mark.parametrize("name", sorted(CHECKPOINT_FILES))
def test_verify_checkpoint_names_each_missing_file(checkpoint_copy, name):
    verify_checkpoint(checkpoint_copy)
    (checkpoint_copy / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"missing: .*{re.escape(name)}.*save_for_hub"):
        verify_checkpoint(checkpoint_copy)


def test_verify_checkpoint_names_all_missing_files_at_once(checkpoint_copy):
    for name in ("README.md", "modeling_toy.py"):
        (checkpoint_copy / name).unlink()
    with pytest.raises(FileNotFoundError) as error:
        verify_checkpoint(checkpoint_copy)
    assert "README.md (model card)" in str(error.value)
    assert "modeling_toy.py (code)" in str(error.value)


def test_verify_checkpoint_requires_auto_map(checkpoint_copy):
    config_path = checkpoint_copy / "config.json"
    config = json.loads(config_path.read_text())
    del config["auto_map"]["AutoModel"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match=r"config\.json auto_map\['AutoModel'\]"):
        verify_checkpoint(checkpoint_copy)


@pytest.fixture
def fake_hub(monkeypatch) -> dict[str, list]:
    """Records the calls that would reach the Hub; `create_commit` is huggingface_hub's single commit boundary.
    `calls["remote_files"]` is what the repo holds before the push."""
    calls = {"create_repo": [], "create_branch": [], "create_commit": [], "remote_files": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})

    def create_branch(self, repo_id, **kwargs):
        calls["create_branch"].append({"repo_id": repo_id, **kwargs})

    def list_repo_files(self, repo_id, **kwargs):
        return list(calls["remote_files"])

    def create_commit(self, repo_id, operations, **kwargs):
        files, deleted = {}, []
        for operation in operations:
            if isinstance(operation, CommitOperationDelete):
                deleted.append(operation.path_in_repo)
                continue
            with operation.as_file() as file:
                files[operation.path_in_repo] = file.read()
        calls["create_commit"].append({"repo_id": repo_id, "files": files, "deleted": deleted, **kwargs})
        url = f"https://huggingface.co/{repo_id}/commit/{'0' * 40}"
        return CommitInfo(commit_url=url, commit_message=kwargs["commit_message"], commit_description="", oid="0" * 40)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "list_repo_files", list_repo_files)
    return calls


def test_push_uploads_every_file_in_one_commit(checkpoint, fake_hub):
    url = push_to_hub(checkpoint, "me/toy", private=True)
    assert url == f"https://huggingface.co/me/toy/commit/{'0' * 40}"
    assert fake_hub["create_repo"] == [{"repo_id": "me/toy", "private": True, "exist_ok": True, "repo_type": "model"}]
    assert fake_hub["create_branch"] == []
    [commit] = fake_hub["create_commit"]
    assert commit["files"] == {path.name: path.read_bytes() for path in checkpoint.iterdir()}
    assert commit["revision"] is None and commit["commit_message"] == "Upload toy-checkpoint"
    assert commit["deleted"] == []


def test_push_deletes_remote_files_the_folder_no_longer_has(checkpoint, fake_hub):
    fake_hub["remote_files"] = [".gitattributes", "config.json", "model-00002-of-00002.safetensors", "old_code.py"]
    push_to_hub(checkpoint, "me/toy")
    [commit] = fake_hub["create_commit"]
    assert commit["deleted"] == ["model-00002-of-00002.safetensors", "old_code.py"]
    assert "config.json" in commit["files"]


def test_push_cli_to_a_branch(checkpoint, fake_hub, capsys):
    push_main([str(checkpoint), "me/toy", "--message", "v1 weights", "--revision", "v1"])
    assert capsys.readouterr().out.strip() == f"https://huggingface.co/me/toy/commit/{'0' * 40}"
    assert fake_hub["create_repo"][0]["private"] is False
    assert fake_hub["create_branch"] == [{"repo_id": "me/toy", "branch": "v1", "exist_ok": True, "repo_type": "model"}]
    [commit] = fake_hub["create_commit"]
    assert (commit["revision"], commit["commit_message"]) == ("v1", "v1 weights")


def test_push_refuses_an_incomplete_folder_before_touching_the_hub(checkpoint_copy, fake_hub):
    (checkpoint_copy / "README.md").unlink()
    with pytest.raises(FileNotFoundError, match="README.md"):
        push_to_hub(checkpoint_copy, "me/toy")
    assert fake_hub == {"create_repo": [], "create_branch": [], "create_commit": [], "remote_files": []}


CARD_ARGUMENTS = dict(
    model_id="me/toy-vlp",
    title="Toy VLP",
    summary="A dual encoder for tests.",
    body_markdown="## Training\n\nTwo steps on nothing.",
    results={"R@1 text-to-image": 36.5, "R@5 text-to-image": 61.25},
    task_type="text-to-image-retrieval",
    task_name="Text-to-image retrieval",
    dataset_name="COCO 5k test",
    dataset_type="yerevann/coco-karpathy",
    metric_types={"R@5 text-to-image": "recall"},
    tags=["vision-language", "contrastive"],
    base_models=["distilbert/distilbert-base-uncased"],
)


def test_model_card_metadata_round_trips():
    text = build_model_card(**CARD_ARGUMENTS)
    data = ModelCard(text).data
    assert data.library_name == "transformers"
    assert data.license == "apache-2.0"
    assert data.tags == ["vision-language", "contrastive"]
    assert data.datasets == ["yerevann/coco-karpathy"]
    assert data.base_model == ["distilbert/distilbert-base-uncased"]
    assert data.model_name == "me/toy-vlp"
    assert {result.metric_name: result.metric_value for result in data.eval_results} == CARD_ARGUMENTS["results"]
    assert [result.metric_type for result in data.eval_results] == ["R@1 text-to-image", "recall"]
    assert {(r.task_type, r.dataset_type, r.dataset_name) for r in data.eval_results} == {
        ("text-to-image-retrieval", "yerevann/coco-karpathy", "COCO 5k test")
    }
    assert 'AutoModel.from_pretrained("me/toy-vlp", trust_remote_code=True)' in text
    assert "| R@5 text-to-image | 61.25 |" in text
    assert text.rstrip().endswith("Two steps on nothing.")


@pytest.mark.parametrize(
    "override, message",
    [
        ({"results": {}}, "`results` is empty"),
        ({"results": {"BLEU-4": float("nan")}}, "not finite"),
        ({"metric_types": {"BLEU": "bleu"}}, "not in `results`"),
    ],
)
def test_model_card_rejects_bad_results(override, message):
    with pytest.raises(ValueError, match=message):
        build_model_card(**(CARD_ARGUMENTS | override))
