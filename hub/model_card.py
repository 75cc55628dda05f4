"""Model cards whose Hub metadata (`model-index`) is built from the evaluation numbers themselves."""

import math
from importlib.resources import files

from huggingface_hub import EvalResult, ModelCard, ModelCardData

# Package data of `hub`, so the template ships in the wheel and is found wherever the package is installed.
TEMPLATE_NAME = "model_card_template.md"


def build_model_card(
    *,
    model_id: str,
    title: str,
    summary: str,
    body_markdown: str,
    results: dict[str, float],
    task_type: str,
    task_name: str,
    dataset_name: str,
    dataset_type: str,
    metric_types: dict[str, str] | None = None,
    tags: list[str],
    license: str = "apache-2.0",
    base_models: list[str] | None = None,
    pipeline_tag: str | None = None,
    pipeline_usage: str | None = None,
) -> str:
    """
    Render the card template (`hub/model_card_template.md`) into a `README.md` for `model_id`.

    Each entry of `results` (metric name -> value) becomes a row of the results table and an `EvalResult` in the
    front matter, so the Hub's leaderboard shows the same numbers as the text. `metric_types` gives the Hub metric id
    of a result (e.g. `{"BLEU-4": "bleu"}`); it defaults to the result's name. `dataset_type` is the Hub dataset id.
    `pipeline_usage` is Python code calling `transformers.pipeline` on the model (see `pipeline_card_fields`); the
    card shows it first under Usage.
    """
    if not results:
        raise ValueError("`results` is empty; a model card reports at least one evaluation number.")
    not_finite = [name for name, value in results.items() if not math.isfinite(value)]
    if not_finite:
        raise ValueError(f"Results {not_finite} are not finite numbers; fix the evaluation before publishing.")
    metric_types = metric_types or {}
    unknown = sorted(set(metric_types) - set(results))
    if unknown:
        raise ValueError(f"`metric_types` names {unknown}, which are not in `results` {sorted(results)}.")

    eval_results = [
        EvalResult(
            task_type=task_type,
            task_name=task_name,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            metric_type=metric_types.get(name, name),
            metric_name=name,
            metric_value=float(value),
        )
        for name, value in results.items()
    ]
    card_data = ModelCardData(
        model_name=model_id,
        eval_results=eval_results,
        datasets=[dataset_type],
        library_name="transformers",
        license=license,
        tags=tags,
        base_model=base_models,
        pipeline_tag=pipeline_tag,
    )
    card = ModelCard.from_template(
        card_data,
        template_str=files(__package__).joinpath(TEMPLATE_NAME).read_text(encoding="utf-8"),
        model_id=model_id,
        title=title,
        summary=summary,
        body_markdown=body_markdown,
        results=results,
        task_name=task_name,
        dataset_name=dataset_name,
        pipeline_usage=pipeline_usage,
    )
    return str(card)


def pipeline_card_fields(pipeline_class: type, model_id: str) -> dict[str, str]:
    """`pipeline_tag` and `pipeline_usage` of `build_model_card` for a model whose `hub_pipelines` holds
    `pipeline_class`: the class's `hub_pipeline_tag` (a task the Hub knows) and its `usage` code for `model_id`."""
    return {"pipeline_tag": pipeline_class.hub_pipeline_tag, "pipeline_usage": pipeline_class.usage.format(model_id=model_id)}
