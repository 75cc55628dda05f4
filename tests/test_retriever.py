"""The faiss caption retriever on its own: exact search, own-caption exclusion, Matryoshka re-ranking, other index
types, save/load with its error cases, and the training-time retrieval hygiene."""

import hashlib
import json

import numpy as np
import pytest
from transformers import GPT2Config
from transformers.dynamic_module_utils import get_imports

import modeling.modeling_retriever as retriever_module
from conftest import tiny_vlp_config
from configuration import RagCaptionerConfig
from modeling.modeling_retriever import CaptionRetriever, datastore_ids_by_item, sample_retrieval

DIM = 32


def caption_vector(caption: str, dim: int = DIM) -> np.ndarray:
    """A fixed pseudo-random vector per caption: a stand-in text encoder."""
    seed = int.from_bytes(hashlib.sha256(caption.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def embed_texts(captions: list[str]) -> np.ndarray:
    return np.stack([caption_vector(caption) for caption in captions])


def unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


CAPTIONS = [f"caption number {i}" for i in range(200)]


def rag_config(projection_dim: int = DIM, **overrides) -> RagCaptionerConfig:
    dims = [d for d in (projection_dim, projection_dim // 2, projection_dim // 4) if d]
    return RagCaptionerConfig(
        retriever_config=tiny_vlp_config(sequence_config=None, projection_dim=projection_dim, matryoshka_dims=dims),
        decoder_config=GPT2Config(vocab_size=128, n_positions=32, n_embd=16, n_layer=1, n_head=2),
        **overrides,
    )


@pytest.fixture
def retriever() -> CaptionRetriever:
    return CaptionRetriever(DIM, embed_texts).build(CAPTIONS, batch_size=64, show_progress=False)


def brute_force(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = unit(queries) @ unit(embed_texts(CAPTIONS)).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def test_flat_search_is_exact_and_returns_captions_scores_and_ids(retriever):
    queries = np.random.default_rng(0).standard_normal((7, DIM)).astype(np.float32)
    result = retriever.search(queries, k=5)
    ids, scores = brute_force(queries, 5)
    np.testing.assert_array_equal(result.ids, ids)
    np.testing.assert_allclose(result.scores, scores, atol=1e-5)
    assert result.captions == [[CAPTIONS[i] for i in row] for row in ids]
    # a caption's own embedding finds it first, with cosine 1
    own = retriever.search(embed_texts(CAPTIONS[:3]), k=1)
    assert own.ids[:, 0].tolist() == [0, 1, 2] and np.allclose(own.scores, 1.0, atol=1e-5)


def test_own_captions_are_excluded_and_k_hits_remain(retriever):
    """Each query is an item's first caption, so without exclusion that caption comes back first."""
    owners = datastore_ids_by_item([5] * 40)
    assert owners[0] == range(0, 5) and owners[39] == range(195, 200)
    queries = embed_texts([CAPTIONS[r.start] for r in owners[:10]])
    assert retriever.search(queries, k=5).ids[:, 0].tolist() == [r.start for r in owners[:10]]
    excluded = retriever.search(queries, k=5, exclude=owners[:10])
    ids, _ = brute_force(queries, 20)
    for i, row in enumerate(excluded.ids.tolist()):
        assert len(row) == 5 and -1 not in row and not set(row) & set(owners[i])
        assert row == [j for j in ids[i] if j not in owners[i]][:5]  # the nearest others, in order
    batched = retriever.search(queries, k=5, exclude=owners[:10], batch_size=3)
    np.testing.assert_array_equal(batched.ids, excluded.ids)


def test_search_pads_rows_with_fewer_hits():
    small = CaptionRetriever(DIM, embed_texts).build(CAPTIONS[:3], show_progress=False)
    result = small.search(embed_texts(CAPTIONS[:2]), k=3, exclude=[[0], [0, 1, 2]])
    assert result.ids.tolist() == [[1, 2, -1], [-1, -1, -1]] or result.ids.tolist() == [[2, 1, -1], [-1, -1, -1]]
    assert np.isnan(result.scores[0, 2]) and np.isnan(result.scores[1]).all()
    assert len(result.captions[0]) == 2 and result.captions[1] == []


def matryoshka_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    """Embeddings whose leading coordinates carry most of the similarity, as a Matryoshka-trained head's do."""
    scale = np.concatenate([np.full(DIM // 4, 3.0), np.full(DIM - DIM // 4, 0.5)])
    return (rng.standard_normal((n, DIM)) * scale).astype(np.float32)


def test_matryoshka_search_with_reranking_returns_the_exact_full_dim_top_k():
    rng = np.random.default_rng(0)
    database, queries, k, refine_factor = matryoshka_vectors(500, rng), matryoshka_vectors(40, rng), 5, 8
    captions = [f"item {i}" for i in range(len(database))]
    full_scores = unit(queries) @ unit(database).T
    exact = np.argsort(-full_scores, axis=1)[:, :k]
    prefix = DIM // 4
    prefix_scores = unit(queries[:, :prefix]) @ unit(database[:, :prefix]).T
    candidates = np.argsort(-prefix_scores, axis=1)[:, : refine_factor * k]
    # the fixture is one where re-ranking must be exact: every true neighbour is among the prefix candidates
    assert all(set(exact[i]) <= set(candidates[i]) for i in range(len(queries)))
    # ... and one where the prefix alone is not enough
    assert not np.array_equal(candidates[:, :k], exact)

    reranked = CaptionRetriever(DIM, search_dim=prefix, refine_factor=refine_factor)
    reranked.add_embeddings(database, captions)
    result = reranked.search(queries, k)
    np.testing.assert_array_equal(result.ids, exact)
    np.testing.assert_allclose(result.scores, np.take_along_axis(full_scores, exact, axis=1), atol=1e-5)
    # stored vectors come back at full dimension
    vectors, mask = reranked.embeddings(result.ids[:2])
    np.testing.assert_allclose(vectors[0, 0], unit(database)[exact[0, 0]], atol=1e-6)
    assert mask.all()

    prefix_only = CaptionRetriever(prefix)
    prefix_only.add_embeddings(database[:, :prefix], captions)
    assert not np.array_equal(prefix_only.search(queries[:, :prefix], k).ids, exact)


@pytest.mark.parametrize(
    ("factory", "parameters"), [("IVF4,Flat", "nprobe=4"), ("HNSW32", "efSearch=64")], ids=["ivf", "hnsw"]
)
def test_other_index_types_build_search_reconstruct_and_round_trip(tmp_path, factory, parameters):
    config = rag_config(index_factory=factory, index_search_parameters=parameters)
    built = CaptionRetriever.from_config(config, embed_texts).build(CAPTIONS, show_progress=False)
    queries = embed_texts(CAPTIONS[:20])
    result = built.search(queries, k=3)
    assert (result.ids[:, 0] == np.arange(20)).mean() >= 0.9  # approximate, but a stored caption finds itself
    vectors, _ = built.embeddings([[5]])
    np.testing.assert_allclose(vectors[0, 0], unit(embed_texts([CAPTIONS[5]]))[0], atol=1e-6)
    built.save(tmp_path, config.index_file_name, config.datastore_file_name)
    loaded = CaptionRetriever.from_pretrained(tmp_path, config, embed_texts)
    np.testing.assert_array_equal(loaded.search(queries, k=3).ids, result.ids)
    np.testing.assert_allclose(loaded.embeddings([[5]])[0], vectors)


@pytest.mark.parametrize(
    ("factory", "getter", "name", "expected"),
    [("IVF128,Flat", lambda index: faiss_module().extract_index_ivf(index).nprobe, "nprobe", 2),
     ("HNSW32", lambda index: faiss_module().downcast_index(index).hnsw.efSearch, "efSearch", 32)],
    ids=["ivf", "hnsw"],
)
def test_approximate_indexes_get_the_measured_search_defaults_unless_told_otherwise(tmp_path, factory, getter, name, expected):
    """faiss alone would search an IVF index with nprobe=1; the retriever probes nlist / 64 lists (HNSW: efSearch
    32), when built and when loaded, and an explicit `index_search_parameters` wins."""
    config = rag_config(index_factory=factory)
    built = CaptionRetriever.from_config(config, embed_texts).build(CAPTIONS, show_progress=False)
    assert getter(built.index) == expected
    built.save(tmp_path, config.index_file_name, config.datastore_file_name)
    assert getter(CaptionRetriever.from_pretrained(tmp_path, config, embed_texts).index) == expected
    chosen = CaptionRetriever(DIM, embed_texts, index_factory=factory, search_parameters=f"{name}=3")
    assert getter(chosen.build(CAPTIONS, show_progress=False).index) == 3
    assert retriever_module.default_search_parameters(CaptionRetriever(DIM).index) == ""


def faiss_module():
    return retriever_module.faiss


def test_add_extends_the_datastore(retriever):
    ids = retriever.add(["a brand new caption", "another one"])
    assert ids == range(200, 202) and len(retriever) == 202
    found = retriever.search(embed_texts(["another one"]), k=1)
    assert found.ids[0, 0] == 201 and found.captions == [["another one"]]
    with pytest.raises(ValueError, match="Caption 1 is ''"):
        retriever.add(["fine", ""])
    with pytest.raises(TypeError, match="single string"):
        retriever.add("a caption")


def test_save_and_load_round_trip(retriever, tmp_path):
    config = rag_config()
    retriever.add(["ünïcode caption"])
    retriever.save(tmp_path, config.index_file_name, config.datastore_file_name)
    lines = (tmp_path / config.datastore_file_name).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 201 and json.loads(lines[-1]) == {"caption": "ünïcode caption"}
    loaded = CaptionRetriever.from_pretrained(tmp_path, config, embed_texts)
    assert loaded.captions == retriever.captions
    queries = np.random.default_rng(1).standard_normal((4, DIM)).astype(np.float32)
    original, reloaded = retriever.search(queries, k=4), loaded.search(queries, k=4)
    np.testing.assert_array_equal(reloaded.ids, original.ids)
    np.testing.assert_array_equal(reloaded.scores, original.scores)


def test_loading_refuses_a_missing_index_or_datastore(retriever, tmp_path):
    config = rag_config()
    retriever.save(tmp_path, config.index_file_name, config.datastore_file_name)
    (tmp_path / config.index_file_name).unlink()
    with pytest.raises(FileNotFoundError, match=r"no retrieval_index.faiss \(config.index_file_name\)"):
        CaptionRetriever.from_pretrained(tmp_path, config, embed_texts)
    retriever.save(tmp_path, config.index_file_name, config.datastore_file_name)
    (tmp_path / config.datastore_file_name).unlink()
    with pytest.raises(FileNotFoundError, match=r"no retrieval_datastore.jsonl \(config.datastore_file_name\)"):
        CaptionRetriever.from_pretrained(tmp_path, config, embed_texts)


def test_loading_refuses_an_index_of_another_dimension(retriever, tmp_path):
    config = rag_config()
    retriever.save(tmp_path, config.index_file_name, config.datastore_file_name)
    with pytest.raises(ValueError, match="holds 32-dim vectors but the retriever's embeddings have 64 dims"):
        CaptionRetriever.from_pretrained(tmp_path, rag_config(projection_dim=64), embed_texts)


def test_loading_refuses_an_index_and_datastore_of_different_sizes(retriever, tmp_path):
    config = rag_config()
    retriever.save(tmp_path, config.index_file_name, config.datastore_file_name)
    datastore = tmp_path / config.datastore_file_name
    datastore.write_text("".join(datastore.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match="holds 200 vectors but the datastore retrieval_datastore.jsonl has 199"):
        CaptionRetriever.from_pretrained(tmp_path, config, embed_texts)
    datastore.write_text('{"caption": "fine"}\n["not", "an", "object"]\n')
    with pytest.raises(ValueError, match="Line 2 of retrieval_datastore.jsonl"):
        CaptionRetriever.from_pretrained(tmp_path, config, embed_texts)


def test_loading_refuses_an_index_built_without_the_configured_reranking(retriever, tmp_path):
    config = rag_config()
    retriever.save(tmp_path, config.index_file_name, config.datastore_file_name)
    with pytest.raises(ValueError, match="without Matryoshka re-ranking but config.search_dim is 16"):
        CaptionRetriever.from_pretrained(tmp_path, rag_config(search_dim=16), embed_texts)


def test_bad_requests_get_clear_errors(retriever):
    with pytest.raises(ValueError, match="Query embeddings have 16 dims"):
        retriever.search(np.ones((1, 16), dtype=np.float32), k=2)
    with pytest.raises(ValueError, match="exclude has 1 entries for 2 queries"):
        retriever.search(np.ones((2, DIM), dtype=np.float32), k=2, exclude=[[0]])
    with pytest.raises(ValueError, match="datastore is empty"):
        CaptionRetriever(DIM, embed_texts).search(np.ones((1, DIM), dtype=np.float32), k=1)
    with pytest.raises(IndexError, match="outside"):
        retriever.lookup([[0, 500]])
    with pytest.raises(ValueError, match="faiss cannot build index_factory 'NoSuchIndex'"):
        CaptionRetriever(DIM, index_factory="NoSuchIndex")
    with pytest.raises(ValueError, match="no text encoder"):
        CaptionRetriever(DIM).build(["a caption"])


def test_faiss_import_is_guarded_for_remote_code(monkeypatch):
    """transformers' remote-code import check skips imports inside try blocks; a missing faiss then says what to do
    when the retriever is created."""
    assert "faiss" not in get_imports(retriever_module.__file__)
    monkeypatch.setattr(retriever_module, "faiss", None)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        CaptionRetriever(DIM)


# ----------------------------------------------------------------------------------------------------- hygiene


def test_sample_retrieval_is_deterministic_per_generator():
    candidates = np.arange(10, 18)
    draws = [
        sample_retrieval(candidates, 4, np.random.default_rng((0, 3, 7)), 200, range(0, 5), 0.3, 0.3).tolist()
        for _ in range(2)
    ]
    assert draws[0] == draws[1]


def test_sample_retrieval_takes_the_top_candidates_by_default():
    chosen = sample_retrieval(np.array([7, -1, 3, 9, 4, 5]), 4, np.random.default_rng(0), 200)
    assert chosen.tolist() == [7, 3, 9, 4]


def test_retrieval_dropout_and_distractors():
    candidates, own = np.arange(10, 14), range(0, 5)
    assert sample_retrieval(candidates, 4, np.random.default_rng(0), 200, own, dropout_prob=1.0).size == 0
    distractors = sample_retrieval(candidates, 4, np.random.default_rng(0), 200, own, distractor_prob=1.0)
    assert len(distractors) == 4 and not set(distractors.tolist()) & set(own)
    assert set(distractors.tolist()) != set(candidates.tolist())
    outcomes = [
        sample_retrieval(candidates, 4, np.random.default_rng(seed), 200, own, distractor_prob=0.2, dropout_prob=0.3)
        for seed in range(3000)
    ]
    dropped = np.mean([len(chosen) == 0 for chosen in outcomes])
    replaced = np.mean([len(chosen) and chosen.tolist() != candidates.tolist() for chosen in outcomes])
    assert dropped == pytest.approx(0.3, abs=0.03) and replaced == pytest.approx(0.7 * 0.2, abs=0.03)
    with pytest.raises(ValueError, match="Probabilities"):
        sample_retrieval(candidates, 4, np.random.default_rng(0), 200, dropout_prob=1.5)
