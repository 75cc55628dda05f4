"""Evaluation shared by the training scripts: metrics come from the evaluate modules shipped in `metrics/`."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

import evaluate
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from scipy.stats import bootstrap

from metrics import metric_path


@cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """`evaluate.load` of a module shipped in this repository (works offline), once per process: the periodic checks
    and reports reuse it, and `compute` with explicit inputs keeps no state between calls."""
    return evaluate.load(str(metric_path(name)))


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


@dataclass
class EncodedPairs:
    """Held-out embeddings of both sides and which items match.

    One side holds several items per match: five captions per COCO image (`grouped="text"`), several clips per
    sign sentence (`grouped="visual"`). `owner[i]` is the row, on the other side, that item i of the grouped side
    matches. Embeddings are unnormalised float32 CPU tensors; `texts` are the texts of the `text` rows.
    """

    visual: torch.Tensor
    text: torch.Tensor
    owner: torch.Tensor
    grouped: Literal["text", "visual"]
    texts: list[str]

    def __post_init__(self):
        if self.grouped not in ("text", "visual"):
            raise ValueError(f"`grouped` must be 'text' or 'visual', got {self.grouped!r}.")
        if len(self.owner) != len(self.grouped_side):
            raise ValueError(f"`owner` has {len(self.owner)} entries for {len(self.grouped_side)} {self.grouped} rows.")

    @property
    def grouped_side(self) -> torch.Tensor:
        return self.text if self.grouped == "text" else self.visual

    @property
    def single_side(self) -> torch.Tensor:
        return self.visual if self.grouped == "text" else self.text

    @property
    def side_names(self) -> tuple[str, str]:
        """Plot legend names of (single side, grouped side)."""
        return ("images", "captions") if self.grouped == "text" else ("sentences", "clips")


def map_sharded(
    accelerator: Accelerator | None, items, function: Callable[[list], Sequence], batch_size: int
) -> list:
    """`function` over batches of `items`, every process taking each `num_processes`-th item; the results come back
    on every process in the order of `items`, gathered together with their indices (so no assumption about how the
    items were split). `items` is a list or a `datasets.Dataset` (read one row at a time). With `accelerator=None`
    this process does all the work (for checks that run on the main process only)."""
    rank, world_size = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    indices = list(range(rank, len(items), world_size))
    results = []
    for start in range(0, len(indices), batch_size):
        results.extend(function([items[i] for i in indices[start : start + batch_size]]))
    if world_size == 1:
        return results
    gathered = sorted(gather_object(list(zip(indices, results))), key=lambda pair: pair[0])
    return [result for _, result in gathered]


def _embed(encode: Callable[[list], torch.Tensor]) -> Callable[[list], list[torch.Tensor]]:
    return lambda batch: list(encode(batch).float().cpu())


def encode_pairs(
    accelerator: Accelerator | None,
    rows,
    encode_visual: Callable[[list[dict]], torch.Tensor],
    encode_texts: Callable[[list[str]], torch.Tensor],
    batch_size: int,
) -> EncodedPairs:
    """Embed a held-out set, sharded over processes (see `map_sharded`): rows with `captions` (several per image) or
    with a `sentence` (several clips per sentence, each distinct sentence embedded once)."""
    column_names = rows.column_names if hasattr(rows, "column_names") else list(rows[0])
    if "captions" in column_names:
        captions = rows["captions"] if hasattr(rows, "column_names") else [row["captions"] for row in rows]
        texts = [caption for image_captions in captions for caption in image_captions]
        owner = torch.tensor([row for row, image_captions in enumerate(captions) for _ in image_captions])
        grouped = "text"
    else:
        clip_sentences = rows["sentence"] if hasattr(rows, "column_names") else [row["sentence"] for row in rows]
        texts = list(dict.fromkeys(clip_sentences))
        index = {sentence: i for i, sentence in enumerate(texts)}
        owner = torch.tensor([index[sentence] for sentence in clip_sentences])
        grouped = "visual"
    return EncodedPairs(
        visual=torch.stack(map_sharded(accelerator, rows, _embed(encode_visual), batch_size)),
        text=torch.stack(map_sharded(accelerator, texts, _embed(encode_texts), batch_size)),
        owner=owner,
        grouped=grouped,
        texts=texts,
    )


@dataclass
class RetrievalReport:
    """Retrieval in both directions at every Matryoshka dimension, computed once and shared by the report, the
    collapse check and the card."""

    metrics: dict[str, float]
    """`dim{d}/{v2t|t2v}_{R@k|MedR|MeanR}` and `dim{d}/{pos_sim|neg_sim}`."""
    headline: dict[str, float]
    """The metrics at the first (full) dimension, without the `dim{d}/` prefix."""
    table: str


def retrieval_report(pairs: EncodedPairs, dims: Sequence[int], ks: tuple[int, ...] = (1, 5, 10)) -> RetrievalReport:
    """Retrieval metrics of `pairs` (through the shipped `retrieval` module) at each of `dims` (prefixes of the
    embeddings, largest first). Directions are named from the visual side: `v2t` = visual query, text candidates.

    The module calls the grouped side "texts" and the single side "images"; with several clips per sentence the
    clips are its "texts", so its `t2i` is our `v2t`.
    """
    metric = load_metric("retrieval")
    rename = {"i2t_": "v2t_", "t2i_": "t2v_"} if pairs.grouped == "text" else {"t2i_": "v2t_", "i2t_": "t2v_"}
    metrics = {}
    for dim in dims:
        # the array path: the embeddings are gathered already, so no Arrow round trip (metrics/retrieval/README.md)
        result = metric.compute_arrays(
            pairs.grouped_side[:, :dim], pairs.owner, pairs.single_side[:, :dim], ks=list(ks)
        )
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
        lines.append("| " + " | ".join([str(dim)] + [_format(metrics[f"dim{dim}/{key}"], key) for key in keys]) + " |")
    lines.append(
        f"\n{len(pairs.visual)} visual items, {len(pairs.text)} texts. "
        f"Chance R@1: {100 / len(pairs.single_side):.2f} % in both directions."
    )
    headline = {key.split("/", 1)[1]: value for key, value in metrics.items() if key.startswith(f"dim{dims[0]}/")}
    return RetrievalReport(metrics=metrics, headline=headline, table="\n".join(lines))


def _format(value: float, key: str) -> str:
    return f"{value:.3f}" if key.endswith("_sim") else f"{value:.1f}" if "Mean" in key or "R@" in key else f"{value:g}"


@dataclass(frozen=True)
class PairedDifference:
    """The mean of `a - b` over items scored both ways, its bootstrap confidence interval, and the smallest
    difference the scores are reported at (`resolution`)."""

    mean: float
    low: float
    high: float
    resolution: float = 0.0

    @property
    def verdict(self) -> str:
        """"beats" / "does worse than" when the interval excludes 0 and the difference shows at the reported
        resolution; otherwise the data cannot tell them apart."""
        if self.low > 0 and self.mean >= self.resolution:
            return "beats"
        if self.high < 0 and self.mean <= -self.resolution:
            return "does worse than"
        return "is not distinguishable from"

    def __str__(self) -> str:
        return f"{self.mean:+.2f}, 95 % CI [{self.low:+.2f}, {self.high:+.2f}]"


def paired_difference(
    a: Sequence[float], b: Sequence[float], resolution: float = 0.0, seed: int = 0
) -> PairedDifference:
    """Per-item scores of two systems on the same items (per-image CIDEr-D, per-problem correctness): mean of the
    differences with a 95 % percentile bootstrap interval over the items (9,999 seeded resamples of the pairs), so an
    ablation is called a win only when resampling the test items would not undo it, and (`resolution`, e.g. 0.1 for
    scores printed to one decimal) only when the difference would show in the printed numbers."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"paired_difference needs two score lists of equal length >= 2, got shapes {a.shape} and {b.shape}.")
    differences = a - b
    if np.all(differences == differences[0]):  # no spread to resample: the interval is the value itself
        return PairedDifference(float(differences[0]), float(differences[0]), float(differences[0]), resolution)
    interval = bootstrap(
        (differences,), np.mean, confidence_level=0.95, method="percentile", rng=np.random.default_rng(seed)
    ).confidence_interval
    return PairedDifference(float(differences.mean()), float(interval.low), float(interval.high), resolution)


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
    averaged. Generate with `map_sharded` (each process takes its share, the strings come back on every process in
    the order of the inputs) and call this function once on the whole corpus.

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
    "EncodedPairs",
    "RetrievalReport",
    "encode_pairs",
    "generation_report",
    "load_metric",
    "map_sharded",
    "retrieval_report",
    "unit_rows",
]
