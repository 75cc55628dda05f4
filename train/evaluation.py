"""Evaluation shared by the training scripts: metrics come from the evaluate modules shipped in `metrics/`."""

from pathlib import Path

import evaluate
import torch

METRICS_DIR = Path(__file__).resolve().parents[1] / "metrics"


def load_metric(name: str) -> evaluate.EvaluationModule:
    """`evaluate.load` of a module shipped in this repository (works offline)."""
    path = METRICS_DIR / name
    if not path.is_dir():
        raise FileNotFoundError(f"No metric module {name!r} under {METRICS_DIR}.")
    return evaluate.load(str(path))


def retrieval_report(encoded: dict, dims: list[int], ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Retrieval metrics in both directions at every Matryoshka dimension.

    `encoded` holds unnormalised `visual` and `text` embeddings and either `text_to_visual` (several captions per
    image: the COCO protocol) or `visual_to_text` (several clips per sentence). Directions are named from the
    visual side: `v2t` = visual query, text candidates; `t2v` = the reverse.

    Returns `{"metrics": {"dim{d}/v2t_R@1": ...}, "headline": metrics at the full dimension, "table": markdown}`.
    """
    metric = load_metric("retrieval")
    metrics, rows = {}, []
    many_texts_per_visual = encoded["text_to_visual"] is not None
    for dim in dims:
        visual, text = encoded["visual"][:, :dim].numpy(), encoded["text"][:, :dim].numpy()
        if many_texts_per_visual:
            result = metric.compute(
                text_embeddings=text, image_index=encoded["text_to_visual"].numpy(), image_embeddings=visual, ks=list(ks)
            )
            rename = {"i2t_": "v2t_", "t2i_": "t2v_"}
        else:  # each clip has one sentence, each sentence several clips: clips take the module's "text" role
            result = metric.compute(
                text_embeddings=visual, image_index=encoded["visual_to_text"].numpy(), image_embeddings=text, ks=list(ks)
            )
            rename = {"t2i_": "v2t_", "i2t_": "t2v_"}
        for key, value in result.items():
            for old, new in rename.items():
                key = key.replace(old, new)
            metrics[f"dim{dim}/{key}"] = round(float(value), 4)
        rows.append(dim)
    header = ["dim"] + [f"{d} R@{k}" for d in ("v2t", "t2v") for k in ks] + ["v2t MedR", "t2v MedR", "v2t MeanR", "t2v MeanR", "PosSim", "NegSim"]
    keys = [f"{d}_R@{k}" for d in ("v2t", "t2v") for k in ks] + ["v2t_MedR", "t2v_MedR", "v2t_MeanR", "t2v_MeanR", "pos_sim", "neg_sim"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dim in rows:
        cells = [str(dim)] + [_format(metrics[f"dim{dim}/{key}"], key) for key in keys]
        lines.append("| " + " | ".join(cells) + " |")
    num_visual, num_text = len(encoded["visual"]), len(encoded["text"])
    lines.append(
        f"\n{num_visual} visual items, {num_text} texts. Chance R@1: v2t {100 * _mean_true_texts(encoded) / num_text:.2f} %, "
        f"t2v {100 * _mean_true_visuals(encoded) / num_visual:.2f} %."
    )
    headline = {key.split("/", 1)[1]: value for key, value in metrics.items() if key.startswith(f"dim{dims[0]}/")}
    return {"metrics": metrics, "headline": headline, "table": "\n".join(lines)}


def _format(value: float, key: str) -> str:
    return f"{value:.3f}" if key.endswith("_sim") else f"{value:.1f}" if "Mean" in key or "R@" in key else f"{value:g}"


def _mean_true_texts(encoded: dict) -> float:
    """Average number of correct texts per visual query (5 for COCO, 1 for sign clips)."""
    if encoded["text_to_visual"] is not None:
        return len(encoded["text_to_visual"]) / len(encoded["visual"])
    return 1.0


def _mean_true_visuals(encoded: dict) -> float:
    """Average number of correct visual items per text query (1 for COCO, clips per sentence for signs)."""
    if encoded["visual_to_text"] is not None:
        return len(encoded["visual_to_text"]) / len(encoded["text"])
    return 1.0


__all__ = ["load_metric", "retrieval_report"]
