"""Evaluation shared by the training scripts: metrics come from the evaluate modules shipped in `metrics/`."""

from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import evaluate
import numpy as np
import torch

METRICS_DIR = Path(__file__).resolve().parents[1] / "metrics"


@cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """`evaluate.load` of a module shipped in this repository (works offline), once per process: the periodic checks
    and reports reuse it, and `compute` with explicit inputs keeps no state between calls."""
    path = METRICS_DIR / name
    if not path.is_dir():
        raise FileNotFoundError(f"No metric module {name!r} under {METRICS_DIR}.")
    return evaluate.load(str(path))


def unit_rows(embeddings: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Float32 numpy copy with L2-normalised rows, so distances and dot products follow cosine similarity."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().to(device="cpu", dtype=torch.float32).numpy()
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"`{name}` must have shape (num_items, dim) with num_items > 0, got {matrix.shape}.")
    if not np.isfinite(matrix).all():
        raise ValueError(f"`{name}` contains NaN or infinite values; check the encoder outputs.")
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def encode_in_batches(encode: Callable[[list], torch.Tensor], items, batch_size: int) -> torch.Tensor:
    """`encode` on consecutive slices of `items` (a list, or a `datasets.Dataset` read a slice at a time),
    concatenated on the CPU in float32."""
    chunks = []
    for start in range(0, len(items), batch_size):
        stop = min(start + batch_size, len(items))
        chunk = items.select(range(start, stop)) if hasattr(items, "select") else items[start:stop]
        with torch.no_grad():
            chunks.append(encode(list(chunk)).float().cpu())
    return torch.cat(chunks)


def encode_clips_and_sentences(
    clips: Sequence[dict],
    encode_clips: Callable[[list[dict]], torch.Tensor],
    encode_sentences: Callable[[list[str]], torch.Tensor],
    batch_size: int,
) -> dict:
    """The eval set as `retrieval_report` takes it when several clips share a sentence: every clip's embedding,
    one embedding per distinct sentence (`texts`), and each clip's sentence (`visual_to_text`)."""
    clip_sentences = [clip["sentence"] for clip in clips]
    sentences = list(dict.fromkeys(clip_sentences))
    index = {sentence: i for i, sentence in enumerate(sentences)}
    return {
        "visual": encode_in_batches(encode_clips, clips, batch_size),
        "text": encode_in_batches(encode_sentences, sentences, batch_size),
        "text_to_visual": None,
        "visual_to_text": torch.tensor([index[sentence] for sentence in clip_sentences]),
        "texts": sentences,
    }


def retrieval_report(encoded: dict, dims: list[int], ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Retrieval metrics in both directions at every Matryoshka dimension.

    `encoded` holds unnormalised `visual` and `text` embeddings and either `text_to_visual` (several captions per
    image: the COCO protocol) or `visual_to_text` (several clips per sentence). Directions are named from the
    visual side: `v2t` = visual query, text candidates; `t2v` = the reverse.

    Returns `{"metrics": {"dim{d}/v2t_R@1": ...}, "headline": metrics at the full dimension, "table": markdown}`.
    """
    metric = load_metric("retrieval")
    metrics = {}
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
            if key in ("num_images", "num_texts"):  # sizes, stated under the table; not scores
                continue
            for old, new in rename.items():
                key = key.replace(old, new)
            metrics[f"dim{dim}/{key}"] = round(float(value), 4)
    header = ["dim"] + [f"{d} R@{k}" for d in ("v2t", "t2v") for k in ks] + ["v2t MedR", "t2v MedR", "v2t MeanR", "t2v MeanR", "PosSim", "NegSim"]
    keys = [f"{d}_R@{k}" for d in ("v2t", "t2v") for k in ks] + ["v2t_MedR", "t2v_MedR", "v2t_MeanR", "t2v_MeanR", "pos_sim", "neg_sim"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dim in dims:
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


def generation_report(predictions: list[str], references: list[str], *, lowercase: bool = True) -> dict:
    """Corpus WER, BLEU-4 and ROUGE-L of generated sentences (Sign2Text), from the modules in `metrics/`.

    Settings (all recorded here so numbers are reproducible):
    - WER (`metrics/wer`, jiwer): corpus value, (S + D + I) / reference words summed over all sentences, after
      lower-casing (if `lowercase`) and removing punctuation on both sides. Reported in percent.
    - BLEU-4 (`metrics/bleu`, sacrebleu `corpus_score`): tokenizer 13a, exp smoothing, case-insensitive if
      `lowercase` (the project's DistilBERT tokenizer is uncased, so its outputs can never match a capital letter).
      Report it with `bleu_signature`, e.g. `nrefs:1|case:lc|eff:no|tok:13a|smooth:exp|version:2.6.0`.
    - ROUGE-L (`metrics/rouge`, rouge_score): mean per-sentence F-measure (and precision/recall), no stemming,
      `tokenizer="unicode"` (same as rouge_score's tokenizer on ASCII text, but keeps non-ASCII letters such as
      German umlauts). Always case-insensitive. Reported in percent.

    Distributed evaluation: BLEU and WER are corpus statistics, so they must NOT be computed per process and
    averaged. Each process generates for its own shard; gather the decoded strings to every/the main process and
    call this function ONCE on the full corpus, e.g.::

        predictions = accelerate.utils.gather_object(local_predictions)  # list concatenated in rank order
        references = accelerate.utils.gather_object(local_references)
        if accelerator.is_main_process:
            report = generation_report(predictions, references)

    Gather predictions and references the same way so they stay aligned. A `DistributedSampler` pads the last
    shard by repeating samples: either gather per batch with `accelerator.gather_for_metrics(strings,
    use_gather_object=True)` (which drops the padding) or truncate to the dataset length, otherwise repeated
    sentences are scored twice. Sentence order does not matter for any of the three metrics.

    Returns `{"metrics": {"WER", "BLEU-4", "ROUGE-L", ...}, "bleu_signature": str, "table": markdown}`; all scores
    are percentages (0-100; WER can exceed 100).
    """
    wer = load_metric("wer").compute(
        predictions=predictions, references=references, lowercase=lowercase, remove_punctuation=True
    )
    bleu = load_metric("bleu").compute(predictions=predictions, references=references, lowercase=lowercase)
    rouge = load_metric("rouge").compute(predictions=predictions, references=references, tokenizer="unicode")
    metrics = {
        "WER": 100.0 * wer["wer"],
        "BLEU-4": bleu["bleu"],
        "ROUGE-L": 100.0 * rouge["rougeL"],
        **{f"BLEU_precision_{n}": precision for n, precision in enumerate(bleu["precisions"], start=1)},
        "BLEU_BP": bleu["bp"],
        "BLEU_sys_len": bleu["sys_len"],
        "BLEU_ref_len": bleu["ref_len"],
        "ROUGE-L_precision": 100.0 * rouge["rougeL_precision"],
        "ROUGE-L_recall": 100.0 * rouge["rougeL_recall"],
        "WER_substitutions": wer["substitutions"],
        "WER_deletions": wer["deletions"],
        "WER_insertions": wer["insertions"],
        "WER_hits": wer["hits"],
        "WER_reference_words": wer["num_reference_words"],
        "num_sentences": wer["num_sentences"],
    }
    precisions = "/".join(f"{p:.1f}" for p in bleu["precisions"])
    table = "\n".join(
        [
            "| BLEU-4 | ROUGE-L | WER | BLEU 1/2/3/4-gram precision | BP | hyp/ref len | S/D/I |",
            "|---|---|---|---|---|---|---|",
            (
                f"| {metrics['BLEU-4']:.2f} | {metrics['ROUGE-L']:.2f} | {metrics['WER']:.2f} | {precisions} | "
                f"{bleu['bp']:.3f} | {bleu['sys_len']}/{bleu['ref_len']} | "
                f"{wer['substitutions']}/{wer['deletions']}/{wer['insertions']} |"
            ),
            (
                f"\n{wer['num_sentences']} sentences, {wer['num_reference_words']} reference words. "
                f"sacreBLEU signature: `{bleu['signature']}`."
            ),
        ]
    )
    return {"metrics": metrics, "bleu_signature": bleu["signature"], "table": table}


__all__ = [
    "encode_clips_and_sentences",
    "encode_in_batches",
    "generation_report",
    "load_metric",
    "retrieval_report",
    "unit_rows",
]
