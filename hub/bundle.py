"""Turn the repository's packaged models into flat, self-contained checkpoint folders for `trust_remote_code`.

The code here lives in packages (`modeling/modeling_vlp.py` imports `configuration.configuration_vlp` and
`.modeling_pooling`), but a Hub repository is one flat folder whose code files may only import each other with
`from .module import name`. The bundler follows the project's imports (relative ones, and absolute
`from package.module import name` of the project's own top-level packages) from the saved classes, copies every
file it reaches into the checkpoint side by side, and rewrites those imports to the flat form.
"""

import ast
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import transformers
from huggingface_hub import ModelCardData
from transformers import Pipeline, PreTrainedModel, ProcessorMixin
from transformers.dynamic_module_utils import get_relative_imports
from transformers.tokenization_utils_base import FULL_TOKENIZER_FILE, TOKENIZER_CONFIG_FILE
from transformers.utils import CONFIG_NAME, PROCESSOR_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

MODEL_CARD_NAME = "README.md"
_REQUIRED_AUTO_CLASSES = {CONFIG_NAME: ("AutoConfig", "AutoModel"), PROCESSOR_NAME: ("AutoProcessor",)}

# The project's model-code packages. An absolute import is bundled only if its top-level package is one of these or
# the package of a class being saved; never by looking at what sits beside the package (in site-packages: everything).
PROJECT_PACKAGES = frozenset({"configuration", "modeling", "processing"})

# The module part of a `from` import: "from ..pkg.mod import", "from .mod import", "from pkg.mod import".
_FROM_MODULE = re.compile(r"from\s*(\.[.\s]*[\w.]*|[\w.]+)\s*import\b")


def _defining_file(obj: Any) -> tuple[Path, Path]:
    """The file defining `obj` (a class, or an instance's class) and the folder its top-level package sits in."""
    cls = obj if isinstance(obj, type) else type(obj)
    module = sys.modules.get(cls.__module__)
    module_file = getattr(module, "__file__", None)
    if cls.__module__ == "__main__" or module_file is None:
        raise TypeError(
            f"{cls.__name__} is defined in `{cls.__module__}`, not in a module file; move it into the project's "
            "packages so its code can be bundled."
        )
    path = Path(module_file).resolve()
    if path.name == "__init__.py":
        raise TypeError(f"{cls.__name__} is defined in {path}; move it to a module file, a flat repo has no packages.")
    return path, path.parents[cls.__module__.count(".")]


def _project_packages(*objs: Any) -> frozenset[str]:
    return PROJECT_PACKAGES | {(obj if isinstance(obj, type) else type(obj)).__module__.partition(".")[0] for obj in objs}


def _is_project_module(module_name: str, project_packages: frozenset[str]) -> bool:
    return module_name.partition(".")[0] in project_packages


def _resolve_relative_import(path: Path, node: ast.ImportFrom, project_root: Path) -> Path:
    where = f"{path}:{node.lineno}"
    if node.module is None:
        raise ValueError(
            f"{where}: `from {'.' * node.level} import {node.names[0].name}` cannot be flattened; "
            f"write `from .{node.names[0].name} import <name>` instead."
        )
    base = path.parent
    for _ in range(node.level - 1):
        base = base.parent
    if base != project_root and project_root not in base.parents:
        raise ValueError(f"{where}: `{'.' * node.level}{node.module}` reaches above the project root {project_root}.")
    *packages, module = node.module.split(".")
    target = base.joinpath(*packages, f"{module}.py")
    if target.is_file():
        return target
    if target.with_suffix("").is_dir():
        raise ValueError(
            f"{where}: `{'.' * node.level}{node.module}` is a package; import from the module file that defines the "
            "names, a flat Hub repo has no packages."
        )
    raise ValueError(f"{where}: cannot find the module `{'.' * node.level}{node.module}` (looked for {target}).")


def _resolve_absolute_import(path: Path, node: ast.ImportFrom, project_root: Path) -> Path:
    target = project_root.joinpath(*node.module.split(".")).with_suffix(".py")
    if target.is_file():
        return target
    raise ValueError(
        f"{path}:{node.lineno}: `from {node.module} import` names a project package, not a module file; import from "
        "the module file that defines the names, a flat Hub repo has no packages."
    )


def _imported_project_files(path: Path, project_root: Path, project_packages: frozenset[str]) -> Iterator[Path]:
    """Project files `path` imports: relative imports, and `from package.module import` of project packages."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            yield _resolve_relative_import(path, node, project_root)
        elif isinstance(node, ast.ImportFrom) and _is_project_module(node.module, project_packages):
            yield _resolve_absolute_import(path, node, project_root)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _is_project_module(alias.name, project_packages):
                    raise ValueError(
                        f"{path}:{node.lineno}: `import {alias.name}` of a project module cannot be flattened; "
                        f"write `from {alias.name} import <name>`."
                    )


def collect_source_files(*objs: Any) -> dict[str, Path]:
    """
    The project source files the given classes or instances need, as `{flat file name: path}`.

    Starts from the files defining the objects' classes and follows project imports recursively. Raises `ValueError`
    on a plain `import package.module` of the project, and when two different files would get the same flat name.
    """
    files: dict[str, Path] = {}
    project_packages = _project_packages(*objs)
    pending = [_defining_file(obj) for obj in objs]
    while pending:
        path, project_root = pending.pop()
        if path.name in files:
            if files[path.name] != path:
                raise ValueError(
                    f"{files[path.name]} and {path} would both be bundled as {path.name}; rename one of them."
                )
            continue
        files[path.name] = path
        pending.extend(
            (imported, project_root) for imported in _imported_project_files(path, project_root, project_packages)
        )
    return files


def flatten_source(text: str, project_packages: frozenset[str] = frozenset()) -> str:
    """Rewrite every project import (`from ..pkg.mod import x`, `from .mod import x`, and `from pkg.mod import x` of
    a top-level package in `project_packages`) to `from .mod import x`."""
    lines = text.splitlines(keepends=True)
    relative_imports = [
        node
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.ImportFrom)
        and (node.level > 0 or _is_project_module(node.module, project_packages))
    ]
    # Right to left, so rewriting one import never shifts the offset of another on the same line.
    for node in sorted(relative_imports, key=lambda node: (node.lineno, node.col_offset), reverse=True):
        if node.module is None:
            raise ValueError(
                f"line {node.lineno}: `from {'.' * node.level} import ...` cannot be flattened; "
                "import from the module instead (`from .module import name`)."
            )
        line = lines[node.lineno - 1]
        start = len(line.encode("utf-8")[: node.col_offset].decode("utf-8"))  # ast offsets count UTF-8 bytes
        match = _FROM_MODULE.match(line, start)
        if match is None:
            raise ValueError(f"line {node.lineno}: write `from {'.' * node.level}{node.module} import` on one line.")
        flat = f"from .{node.module.rpartition('.')[2]} import"
        lines[node.lineno - 1] = line[: match.start()] + flat + line[match.end() :]
    return "".join(lines)


def _auto_map_entry(cls: type) -> str:
    return f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}"


def _update_auto_map(json_path: Path, auto_map: dict[str, str], custom_pipelines: dict[str, dict] | None = None) -> None:
    content = json.loads(json_path.read_text(encoding="utf-8"))
    content["auto_map"] = {**content.get("auto_map", {}), **auto_map}
    if custom_pipelines is not None:
        content["custom_pipelines"] = custom_pipelines  # replaces any that a reloaded config carried over
        if not custom_pipelines:
            del content["custom_pipelines"]
    json_path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _custom_pipelines(pipelines: dict[str, type]) -> dict[str, dict]:
    """config.json's `custom_pipelines`: what `transformers.pipeline(task, model=folder, trust_remote_code=True)`
    reads to import the task's class from the folder's code and to load the model through `AutoModel`."""
    return {task: {"impl": _auto_map_entry(cls), "pt": ["AutoModel"]} for task, cls in sorted(pipelines.items())}


def _placeholder_model_card(model: PreTrainedModel) -> str:
    card_data = ModelCardData(library_name="transformers")
    return (
        f"---\n{card_data.to_yaml()}\n---\n\n# {type(model).__name__}\n\n"
        "No model card yet: write one with `hub.model_card.build_model_card`.\n"
    )


def _check_sub_processors(processor: ProcessorMixin) -> None:
    """Only transformers' own sub-processors reload: nothing would map a custom one's saved class name to its code."""
    for attribute in processor.get_attributes():
        sub_processor = getattr(processor, attribute)
        if not type(sub_processor).__module__.startswith("transformers."):
            raise NotImplementedError(
                f"{type(processor).__name__}.{attribute} is a {type(sub_processor).__name__} from "
                f"`{type(sub_processor).__module__}`; only transformers' own tokenizers and image processors can be "
                "bundled. Move the custom logic into the processor class."
            )


def _write_checkpoint(
    folder: Path,
    model: PreTrainedModel,
    processor: ProcessorMixin,
    model_card: str,
    model_auto_classes: dict[str, type],
    pipelines: dict[str, type],
    extra_files: dict[str, Path],
) -> None:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    # Written last: `save_pretrained` of a class registered for an auto class copies its unflattened files here.
    source_objects = (model.config, processor, *model_auto_classes.values(), *pipelines.values())
    project_packages = _project_packages(*source_objects)
    for name, path in collect_source_files(*source_objects).items():
        (folder / name).write_text(flatten_source(path.read_text(encoding="utf-8"), project_packages), encoding="utf-8")
    _update_auto_map(
        folder / CONFIG_NAME,
        {"AutoConfig": _auto_map_entry(type(model.config))}
        | {auto_class: _auto_map_entry(cls) for auto_class, cls in model_auto_classes.items()},
        _custom_pipelines(pipelines),
    )
    _update_auto_map(folder / PROCESSOR_NAME, {"AutoProcessor": _auto_map_entry(type(processor))})
    for name, path in extra_files.items():
        shutil.copyfile(path, folder / name)
    (folder / MODEL_CARD_NAME).write_text(model_card, encoding="utf-8")
    verify_checkpoint(folder)


def _model_auto_classes(model: PreTrainedModel, extra_auto_classes: dict[str, type]) -> dict[str, type]:
    """`AutoModel`, the auto classes the model class declares in `hub_auto_classes` (e.g. a seq2seq model:
    `("AutoModelForSeq2SeqLM",)`), then `extra_auto_classes`; each must be a transformers AutoModel class."""
    auto_classes = {"AutoModel": type(model)}
    auto_classes |= {auto_class: type(model) for auto_class in getattr(type(model), "hub_auto_classes", ())}
    auto_classes |= extra_auto_classes
    for auto_class in auto_classes:
        if not auto_class.startswith("AutoModel") or not hasattr(transformers, auto_class):
            raise ValueError(f"{auto_class!r} is not a transformers AutoModel class (e.g. 'AutoModelForCausalLM').")
    return auto_classes


def _model_pipelines(model: PreTrainedModel) -> dict[str, type]:
    """`{task: Pipeline subclass}` the model declares in `hub_pipelines` (a class attribute, or a property when the
    tasks depend on the config)."""
    pipelines = dict(getattr(model, "hub_pipelines", {}))
    for task, cls in pipelines.items():
        if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
            raise TypeError(
                f"hub_pipelines[{task!r}] of {type(model).__name__} is {cls!r}; map each task to a Pipeline subclass."
            )
    return pipelines


def _checked_extra_files(extra_files: dict[str, str | os.PathLike] | None) -> dict[str, Path]:
    checked = {}
    for name, path in (extra_files or {}).items():
        if Path(name).name != name or name in (CONFIG_NAME, PROCESSOR_NAME, MODEL_CARD_NAME, SAFE_WEIGHTS_NAME):
            raise ValueError(f"Extra file name {name!r} must be a plain file name that the checkpoint does not use.")
        if not Path(path).is_file():
            raise FileNotFoundError(f"Extra file {name!r}: {path} does not exist or is not a file.")
        checked[name] = Path(path)
    return checked


def save_for_hub(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    output_dir: str | os.PathLike,
    model_card: str | None = None,
    *,
    extra_auto_classes: dict[str, type] | None = None,
    extra_files: dict[str, str | os.PathLike] | None = None,
) -> Path:
    """
    Write a checkpoint folder that loads with `AutoConfig`/`AutoModel`/`AutoProcessor` and `trust_remote_code=True`.

    The folder holds the safetensors weights, the processor files, the flattened code, `auto_map` entries and
    `README.md` (`model_card`, or a placeholder). Besides `AutoModel`, the model loads through the auto classes its
    class lists in `hub_auto_classes` and those `extra_auto_classes` maps to model classes, e.g.
    `{"AutoModelForCausalLM": MyModel}`. The `Pipeline` classes of the model's `hub_pipelines` (`{task: class}`) are
    bundled too and registered in `custom_pipelines`, so `transformers.pipeline(task, model=folder,
    trust_remote_code=True)` works. `extra_files` (`{file name: path}`) are copied in beside the weights (data
    the model reads with `cached_file`, e.g. a search index). Everything is written to a temporary sibling folder first and
    swapped in at the end, so a failure leaves no partial folder behind and an existing `output_dir` untouched.
    """
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder; pass a folder path for the checkpoint.")
    model_auto_classes = _model_auto_classes(model, extra_auto_classes or {})
    pipelines = _model_pipelines(model)
    extra_files = _checked_extra_files(extra_files)
    _check_sub_processors(processor)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # Siblings on the same filesystem, so `os.replace` is an atomic rename; `mkdir` honours the umask (mkdtemp: 0o700).
    staging_dir = output_dir.with_name(f".{output_dir.name}.staging-{uuid.uuid4().hex[:8]}")
    staging_dir.mkdir()
    try:
        _write_checkpoint(
            staging_dir,
            model,
            processor,
            model_card or _placeholder_model_card(model),
            model_auto_classes,
            pipelines,
            extra_files,
        )
        if output_dir.exists():
            retired_dir = output_dir.with_name(f".{output_dir.name}.retired-{uuid.uuid4().hex[:8]}")
            os.replace(output_dir, retired_dir)
            try:
                os.replace(staging_dir, output_dir)
            except BaseException:
                os.replace(retired_dir, output_dir)
                raise
            shutil.rmtree(retired_dir)
        else:
            os.replace(staging_dir, output_dir)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    return output_dir


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _code_files(folder: Path, auto_map: dict[str, Any]) -> set[str]:
    """Code files a `trust_remote_code` load reads: those `auto_map` names, and what they import, recursively."""
    pending = [f"{reference.partition('.')[0]}.py" for reference in auto_map.values()]
    code_files: set[str] = set()
    while pending:
        name = pending.pop()
        if name not in code_files:
            code_files.add(name)
            if (folder / name).is_file():
                # transformers' own parser, so the check follows exactly the imports its loader will follow
                pending.extend(f"{module}.py" for module in get_relative_imports(folder / name))
    return code_files


def verify_checkpoint(folder: str | os.PathLike) -> None:
    """Raise `FileNotFoundError` naming everything a `trust_remote_code` load of `folder` needs but cannot find."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {folder} does not exist; write it with hub.save_for_hub.")
    required = {
        CONFIG_NAME: "model config",
        PROCESSOR_NAME: "processor config",
        TOKENIZER_CONFIG_FILE: "tokenizer config",
        FULL_TOKENIZER_FILE: "tokenizer",
        MODEL_CARD_NAME: "model card",
    }
    if (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        weight_map = _read_json(folder / SAFE_WEIGHTS_INDEX_NAME)["weight_map"]
        required |= {shard: "weight shard" for shard in set(weight_map.values())}
    else:
        required[SAFE_WEIGHTS_NAME] = "weights"
    auto_maps = {name: _read_json(folder / name).get("auto_map", {}) for name in (CONFIG_NAME, PROCESSOR_NAME)}
    custom_pipelines = _read_json(folder / CONFIG_NAME).get("custom_pipelines", {})
    pipeline_impls = {f"pipeline {task!r}": entry["impl"] for task, entry in custom_pipelines.items()}
    code_references = auto_maps[CONFIG_NAME] | auto_maps[PROCESSOR_NAME] | pipeline_impls
    required |= {name: "code" for name in _code_files(folder, code_references)}

    missing = [f"{name} ({what})" for name, what in sorted(required.items()) if not (folder / name).is_file()]
    missing += [
        f"{config_name} auto_map[{auto_class!r}]"
        for config_name, auto_classes in _REQUIRED_AUTO_CLASSES.items()
        for auto_class in auto_classes
        if (folder / config_name).is_file() and auto_class not in auto_maps[config_name]
    ]
    missing += [
        f"{CONFIG_NAME} auto_map[{auto_class!r}] (pipeline {task!r} loads the model through it)"
        for task, entry in custom_pipelines.items()
        for auto_class in entry.get("pt", ())
        if auto_class not in auto_maps[CONFIG_NAME]
    ]
    if missing:
        raise FileNotFoundError(
            f"Checkpoint {folder} is incomplete, missing: {', '.join(missing)}. "
            "Re-run hub.save_for_hub(model, processor, folder) to write a complete checkpoint."
        )
