"""The RAG captioner's retriever: a faiss index over a caption datastore, saved next to the model's weights.

Datastore id i is line i of the datastore file and vector i of the index, so a search returns ids, captions and scores
together. Embeddings come from the VLP dual encoder (the model hands in its text-embedding function); the index
stores them L2-normalised, so inner product is cosine similarity. Also here: the training-time retrieval hygiene (own
captions excluded, random distractors, retrieval dropout), as functions of a per-sample generator so a run is
reproducible whatever the batch order.
"""

import json
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.utils import cached_file

try:
    import faiss
except ImportError:  # checked when a retriever is created, so remote-code loading reports it clearly
    faiss = None

# `from_pretrained` keyword arguments that locate files; passed on to `cached_file`.
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


# Search settings used when `search_parameters` is empty, measured on VLP caption embeddings by
# benchmarks/bench_faiss.py (50k captions, 1,024 image queries, IVF1024): probing 1/64 of the lists gave recall@10
# 0.997 against exact search (1/128: 0.980, 1/256: 0.924) at 1/30 of its time, and HNSW32 efSearch=32 gave 0.984.
# faiss's own nprobe=1 misses most neighbours of an IVF index.
IVF_PROBED_SHARE = 64
HNSW_EF_SEARCH = 32


def default_search_parameters(index) -> str:
    """The measured search setting of a faiss index's family: nprobe = nlist / 64 for IVF, efSearch = 32 for HNSW,
    "" for exact indexes. Matryoshka wrappers (pre-transform, refine) are looked through."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return f"nprobe={max(1, ivf.nlist // IVF_PROBED_SHARE)}"
    while isinstance(index, (faiss.IndexRefine, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.base_index if isinstance(index, faiss.IndexRefine) else index.index)
    return f"efSearch={HNSW_EF_SEARCH}" if isinstance(faiss.downcast_index(index), faiss.IndexHNSW) else ""


def _require_faiss() -> None:
    if faiss is None:
        raise ImportError(
            "The RAG captioner's retriever needs faiss, which is not installed: `pip install faiss-cpu` "
            "(or `faiss-gpu`), then load the model again."
        )


def _unit_rows(embeddings: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A C-contiguous float32 copy with L2-normalised rows, as faiss wants it."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().to(device="cpu", dtype=torch.float32).numpy()
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must have shape (num_items, dim), got {matrix.shape}.")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the encoder outputs.")
    return np.ascontiguousarray(matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12))


@dataclass
class RetrievedCaptions:
    """The result of a search, one row per query. Rows with fewer than k hits (exclusions, a small or approximate
    index) are padded with id -1 and score NaN; `captions` lists only the hits."""

    captions: list[list[str]]
    scores: np.ndarray
    """`(num_queries, k)` float32: cosine similarity (`inner_product`) or squared distance (`l2`)."""
    ids: np.ndarray
    """`(num_queries, k)` int64 datastore ids, best first."""


class CaptionRetriever:
    """A faiss index plus the captions it indexes.

    Args:
        dim: size of the VLP embedding.
        embed_texts: captions → `(n, dim)` embeddings (the VLP text tower); needed by `build` and `add`.
        index_factory, metric, search_dim, refine_factor, search_parameters: as the fields `index_factory`,
            `index_metric`, `search_dim`, `refine_factor`, `index_search_parameters` of `RagCaptionerConfig`. An empty
            `search_parameters` means the measured defaults of `default_search_parameters` (IVF: nprobe = nlist / 64,
            HNSW: efSearch = 32).
    """

    def __init__(
        self,
        dim: int,
        embed_texts: Callable[[list[str]], torch.Tensor | np.ndarray] | None = None,
        *,
        index_factory: str = "Flat",
        metric: str = "inner_product",
        search_dim: int | None = None,
        refine_factor: int = 8,
        search_parameters: str = "",
    ):
        _require_faiss()
        if search_dim is not None and not 1 <= search_dim <= dim:
            raise ValueError(f"search_dim must lie in [1, {dim}], got {search_dim}.")
        self.dim, self.embed_texts = dim, embed_texts
        self.index_factory, self.metric = index_factory, metric
        self.search_dim = None if search_dim == dim else search_dim
        self.refine_factor, self.search_parameters = refine_factor, search_parameters
        self.index = self._new_index()
        self.captions: list[str] = []

    @classmethod
    def from_config(cls, config, embed_texts=None) -> "CaptionRetriever":
        """An empty retriever with the index settings of a `RagCaptionerConfig`."""
        return cls(
            config.retriever_config.projection_dim,
            embed_texts,
            index_factory=config.index_factory,
            metric=config.index_metric,
            search_dim=config.search_dim,
            refine_factor=config.refine_factor,
            search_parameters=config.index_search_parameters,
        )

    def __len__(self) -> int:
        return len(self.captions)

    def _new_index(self):
        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "inner_product" else faiss.METRIC_L2
        try:
            if self.search_dim is None:
                index = faiss.index_factory(self.dim, self.index_factory, metric)
            else:
                # The index sees the re-normalised first `search_dim` coordinates; IndexRefineFlat keeps the full
                # vectors and re-scores the `refine_factor * k` candidates exactly.
                prefix = faiss.IndexPreTransform(faiss.index_factory(self.search_dim, self.index_factory, metric))
                prefix.prepend_transform(faiss.NormalizationTransform(self.search_dim, 2.0))
                prefix.prepend_transform(faiss.RemapDimensionsTransform(self.dim, self.search_dim, False))
                index = faiss.IndexRefineFlat(prefix)
                index.k_factor = float(self.refine_factor)
        except RuntimeError as error:
            raise ValueError(
                f"faiss cannot build index_factory {self.index_factory!r}: {error}. Use e.g. 'Flat', 'IVF1024,Flat' "
                "or 'HNSW32'."
            ) from None
        self._configure(index)
        return index

    def _configure(self, index) -> None:
        """Search parameters (the measured defaults of the index family unless `search_parameters` names others), and
        a direct map so an IVF index can return its stored vectors (`embeddings`)."""
        parameters = self.search_parameters or default_search_parameters(index)
        if parameters:
            faiss.ParameterSpace().set_index_parameters(index, parameters)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and not isinstance(index, faiss.IndexRefine):  # a refine index reconstructs from its copy
            ivf.set_direct_map_type(faiss.DirectMap.Array)

    def _embed(self, captions: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        if self.embed_texts is None:
            raise ValueError("This retriever has no text encoder; create it through RagCaptionerModel.")
        batches = range(0, len(captions), batch_size)
        progress = tqdm(batches, desc="embedding captions", unit="batch", disable=not show_progress)
        return np.concatenate(
            [_unit_rows(self.embed_texts(captions[start : start + batch_size]), "caption embeddings") for start in progress]
        )

    def build(self, captions: Sequence[str], batch_size: int = 256, show_progress: bool = True) -> "CaptionRetriever":
        """Replace the datastore with `captions`: embed them in batches, train the index if its type needs it (IVF),
        add them. Returns the retriever."""
        captions = _check_captions(captions)
        embeddings = self._embed(captions, batch_size, show_progress)
        self.index = self._new_index()
        if not self.index.is_trained:
            if len(captions) < 1:
                raise ValueError(f"index_factory {self.index_factory!r} must be trained; pass captions to build it.")
            self.index.train(embeddings)
        self.captions = []
        self.add_embeddings(embeddings, captions)
        return self

    def add(self, captions: Sequence[str], batch_size: int = 256, show_progress: bool = False) -> range:
        """Append `captions` to the datastore (e.g. new captions after training); returns their datastore ids."""
        captions = _check_captions(captions)
        return self.add_embeddings(self._embed(captions, batch_size, show_progress), captions)

    def add_embeddings(self, embeddings: np.ndarray | torch.Tensor, captions: Sequence[str]) -> range:
        """Append captions whose embeddings were computed elsewhere (e.g. sharded over processes)."""
        embeddings = _unit_rows(embeddings, "embeddings")
        if embeddings.shape != (len(captions), self.dim):
            raise ValueError(
                f"Got embeddings of shape {embeddings.shape} for {len(captions)} captions; expected "
                f"({len(captions)}, {self.dim})."
            )
        if not self.index.is_trained:
            raise ValueError(f"The {self.index_factory!r} index is not trained yet; call build(captions) first.")
        start = len(self.captions)
        self.index.add(embeddings)
        self.captions.extend(captions)
        return range(start, len(self.captions))

    def search(
        self,
        image_embeddings: np.ndarray | torch.Tensor,
        k: int,
        exclude: Sequence[Collection[int]] | None = None,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> RetrievedCaptions:
        """
        The k nearest captions of each query embedding.

        Args:
            image_embeddings: `(num_queries, dim)` VLP image embeddings (normalised here).
            k: captions per query.
            exclude: per query, datastore ids that must not be returned (a training image's own captions).
            batch_size: search this many queries at a time, with a progress bar if `show_progress` (pre-computing
                the neighbours of a whole training set).
        """
        queries = _unit_rows(image_embeddings, "image_embeddings")
        if queries.shape[1] != self.dim:
            raise ValueError(f"Query embeddings have {queries.shape[1]} dims; the index holds {self.dim}-dim vectors.")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}.")
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries; give one per query.")
        if len(self) == 0:
            raise ValueError("The datastore is empty; call model.retriever.build(captions) first.")
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), np.nan, dtype=np.float32)
        step = batch_size or max(len(queries), 1)
        for start in tqdm(range(0, len(queries), step), desc="searching", unit="batch", disable=not show_progress):
            stop = start + step
            excluded = exclude[start:stop] if exclude is not None else [()] * (min(stop, len(queries)) - start)
            # Searching len(excluded ids) deeper guarantees k hits that survive the exclusion.
            depth = min(k + max(len(ids_) for ids_ in excluded), len(self))
            found_scores, found_ids = self.index.search(queries[start:stop], depth)
            for row, (row_ids, row_scores, banned) in enumerate(zip(found_ids, found_scores, excluded), start=start):
                keep = (row_ids >= 0) & ~np.isin(row_ids, np.fromiter(banned, dtype=np.int64, count=len(banned)))
                hits = np.flatnonzero(keep)[:k]
                ids[row, : len(hits)], scores[row, : len(hits)] = row_ids[hits], row_scores[hits]
        return RetrievedCaptions(captions=self.lookup(ids), scores=scores, ids=ids)

    def lookup(self, ids: Sequence[Sequence[int]] | np.ndarray) -> list[list[str]]:
        """Captions of datastore ids, per query; -1 entries (no hit) are skipped."""
        return [[self.captions[i] for i in row if i >= 0] for row in _checked_ids(ids, len(self))]

    def embeddings(self, ids: Sequence[Sequence[int]] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored embeddings of datastore ids, padded: `(num_queries, width, dim)` and a `(num_queries, width)`
        boolean mask, width = the longest row. Exact for flat indexes and Matryoshka re-ranking; an index that
        compresses vectors (PQ) returns its approximations."""
        rows = [[i for i in row if i >= 0] for row in _checked_ids(ids, len(self))]
        width = max((len(row) for row in rows), default=0)
        vectors = np.zeros((len(rows), width, self.dim), dtype=np.float32)
        mask = np.zeros((len(rows), width), dtype=bool)
        for position, row in enumerate(rows):
            if row:
                vectors[position, : len(row)] = self.index.reconstruct_batch(np.asarray(row, dtype=np.int64))
                mask[position, : len(row)] = True
        return vectors, mask

    def save(self, folder: str | os.PathLike, index_file_name: str, datastore_file_name: str) -> None:
        """Write the index (`faiss.write_index`) and the datastore (JSON lines, line i = id i) into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / index_file_name))
        with open(folder / datastore_file_name, "w", encoding="utf-8") as datastore:
            datastore.writelines(json.dumps({"caption": caption}, ensure_ascii=False) + "\n" for caption in self.captions)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, config, embed_texts=None, **hub_kwargs) -> "CaptionRetriever":
        """Load the index and datastore named in `config` from a model folder or Hub repository (`revision` and the
        other `cached_file` arguments in `hub_kwargs`), checking that they match each other and the model."""
        retriever = cls.from_config(config, embed_texts)
        index_path = _locate(path_or_repo_id, config.index_file_name, "index_file_name", hub_kwargs)
        datastore_path = _locate(path_or_repo_id, config.datastore_file_name, "datastore_file_name", hub_kwargs)
        index = faiss.read_index(index_path)
        if index.d != retriever.dim:
            raise ValueError(
                f"The index {config.index_file_name} holds {index.d}-dim vectors but the retriever's embeddings have "
                f"{retriever.dim} dims (retriever_config.projection_dim); it was built with another VLP model. "
                "Rebuild it with model.retriever.build(captions)."
            )
        if (config.search_dim is not None) != isinstance(index, faiss.IndexRefine):
            raise ValueError(
                f"The index {config.index_file_name} was built {'with' if isinstance(index, faiss.IndexRefine) else 'without'} "
                f"Matryoshka re-ranking but config.search_dim is {config.search_dim}; rebuild it with this config."
            )
        captions = _read_datastore(datastore_path, config.datastore_file_name)
        if index.ntotal != len(captions):
            raise ValueError(
                f"The index {config.index_file_name} holds {index.ntotal} vectors but the datastore "
                f"{config.datastore_file_name} has {len(captions)} captions; they must come from the same save."
            )
        retriever._configure(index)
        retriever.index, retriever.captions = index, captions
        return retriever


def _check_captions(captions: Sequence[str]) -> list[str]:
    if isinstance(captions, str):
        raise TypeError("captions must be a list of strings, got a single string; wrap it in a list.")
    captions = list(captions)
    for position, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"Caption {position} is {caption!r}; every datastore entry must be a non-empty string.")
    return captions


def _checked_ids(ids: Sequence[Sequence[int]] | np.ndarray, size: int) -> list[list[int]]:
    rows = [[int(i) for i in row] for row in ids]
    for position, row in enumerate(rows):
        if any(i >= size or i < -1 for i in row):
            raise IndexError(f"Query {position} has datastore ids {row} outside [0, {size}) (use -1 for none).")
    return rows


def _locate(path_or_repo_id, file_name: str, field: str, hub_kwargs: dict) -> str:
    resolved = cached_file(
        path_or_repo_id,
        file_name,
        _raise_exceptions_for_missing_entries=False,
        **{name: value for name, value in hub_kwargs.items() if name in HUB_KWARGS},
    )
    if resolved is None:
        raise FileNotFoundError(
            f"{path_or_repo_id} has no {file_name} (config.{field}); a RAG captioner folder must hold the index and "
            "datastore that model.save_pretrained writes next to the weights."
        )
    return resolved


def _read_datastore(path: str, file_name: str) -> list[str]:
    captions = []
    with open(path, encoding="utf-8") as datastore:
        for line_number, line in enumerate(datastore, start=1):
            try:
                caption = json.loads(line)["caption"]
            except (json.JSONDecodeError, KeyError, TypeError):
                caption = None
            if not isinstance(caption, str):
                raise ValueError(f"Line {line_number} of {file_name} is not a JSON object with a string 'caption'.")
            captions.append(caption)
    return captions


def datastore_ids_by_item(captions_per_item: Sequence[int], start: int = 0) -> list[range]:
    """Datastore ids of each item's captions, for a datastore built from the items' captions in order (item 0's
    captions first): the ids to exclude when retrieving for a training item."""
    ranges, position = [], start
    for count in captions_per_item:
        ranges.append(range(position, position + count))
        position += count
    return ranges


def sample_retrieval(
    candidates: Sequence[int] | np.ndarray,
    k: int,
    rng: np.random.Generator,
    datastore_size: int,
    exclude: Collection[int] = (),
    distractor_prob: float = 0.0,
    dropout_prob: float = 0.0,
) -> np.ndarray:
    """
    The datastore ids one training sample sees, from its pre-computed neighbours (own captions already excluded):

    - with probability `dropout_prob`, none (retrieval dropout: the decoder must also caption from the image alone);
    - otherwise, with probability `distractor_prob`, k random datastore ids outside `exclude` (distractors: the
      decoder must check neighbours against the image rather than copy them);
    - otherwise the first k valid candidates (-1 entries skipped).

    All randomness comes from `rng`, the sample's own generator (the runner seeds it with the seed, epoch and row
    index), and two numbers are always drawn first, so the outcome depends on nothing else.
    """
    if not 0.0 <= distractor_prob <= 1.0 or not 0.0 <= dropout_prob <= 1.0:
        raise ValueError(f"Probabilities must lie in [0, 1], got distractor {distractor_prob}, dropout {dropout_prob}.")
    drop, distract = rng.random(2)
    if drop < dropout_prob:
        return np.empty(0, dtype=np.int64)
    if distract < distractor_prob:
        allowed = datastore_size - len(exclude)
        draw = rng.choice(datastore_size, size=min(datastore_size, k + len(exclude)), replace=False)
        return draw[~np.isin(draw, list(exclude))][: min(k, allowed)].astype(np.int64)
    candidates = np.asarray(candidates, dtype=np.int64)
    return candidates[candidates >= 0][:k]


__all__ = [
    "CaptionRetriever",
    "RetrievedCaptions",
    "datastore_ids_by_item",
    "default_search_parameters",
    "sample_retrieval",
]
