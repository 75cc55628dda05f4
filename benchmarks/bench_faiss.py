"""Benchmark: the RAG captioner's faiss datastore (`modeling/modeling_retriever.py`), exact `Flat` search as the
baseline for every approximate index, in one process.

1. **Build**: captions/s of `CaptionRetriever.build` (VLP text tower + index add) vs encoding the same captions alone
   (`--build-captions` of them, the two taking turns).
2. **Quality on VLP embeddings** (the trained VLP in `--vlp`; `--quick` uses a tiny untrained one): the datastore is every caption of `--quality-images`
   synthetic shapes pictures, the queries are `--queries` of those pictures' VLP image embeddings (as the RAG
   captioner queries). Recall@10 of each approximate index against `Flat`, tie-aware: a returned caption counts if its
   exact score reaches Flat's 10th best (less 1e-5), since identical captions have identical embeddings; recall@1 the
   same for the top hit. R@1 (own caption): share of queries whose top caption is one of the picture's own five, by
   text. It is low for every index, exact search included: thousands of pictures share colours, shapes and places,
   and a caption of another picture with the same content counts as a miss, so it only shows that no index loses
   any. Matryoshka rows search the first `--search-dim` coordinates with the named index (`Flat`, or compressed:
   `SQ8` 8-bit scalars, `PQ16` 16-byte product codes) and re-rank `refine_factor x k` candidates at full dim.
3. **Speed on random unit vectors** at `--entries` datastore sizes, batches of 64 queries, at the retriever's default
   search settings (`default_search_parameters`, chosen from part 2's sweep; their recall there is printed). HNSW is built only up to `--hnsw-max-entries` (single-threaded HNSW construction of 1M vectors takes
   longer than this benchmark's budget); larger sizes are marked "not built".
4. **Share of a RAG training step**: one search of a training batch (64 images) at the largest size vs one
   optimisation step of the default RAG captioner (batch 64) on this machine.

Usage:
    python benchmarks/bench_faiss.py [--entries 100000 1000000] [--threads 1]
"""

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import REPO_ROOT, apply_common_arguments, benchmark_parser, machine_description, median_seconds, print_table

import faiss


def ivf_factory(nlist: int) -> str:
    return f"IVF{nlist},Flat"


def build_index(vectors: np.ndarray, factory: str, search_dim: int | None = None, refine_factor: int = 8):
    """The index `CaptionRetriever` would build (same factory, same Matryoshka wrapping), filled with `vectors`."""
    from modeling.modeling_retriever import CaptionRetriever

    retriever = CaptionRetriever(vectors.shape[1], index_factory=factory, search_dim=search_dim, refine_factor=refine_factor)
    if not retriever.index.is_trained:
        retriever.index.train(vectors)
    retriever.index.add(vectors)
    return retriever.index


def set_parameter(index, name: str, value) -> None:
    faiss.ParameterSpace().set_index_parameter(index, name, value)


def tie_aware_recall(found_ids: np.ndarray, exact_scores: np.ndarray, queries: np.ndarray, data: np.ndarray, k: int) -> float:
    """Share of the returned ids whose exact score reaches the exact k-th best score (less 1e-5)."""
    threshold = exact_scores[:, k - 1 : k] - 1e-5
    valid = found_ids >= 0
    scores = np.einsum("qd,qkd->qk", queries, data[np.where(valid, found_ids, 0)])
    return float(((scores >= threshold) & valid).sum() / (k * len(queries)))


def random_unit(count: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def vlp_data(args):
    """Captions, their VLP text embeddings (timed: encoding alone and the full build), and image queries."""
    from transformers import AutoImageProcessor

    from data.synthetic_shapes import make_shapes_dataset
    from modeling import RagCaptionerModel

    if args.quick:
        model, image_processor = tiny_untrained_captioner()
    elif not Path(args.vlp, "config.json").is_file():
        raise FileNotFoundError(
            f"No trained VLP at {args.vlp}: train one (python train/vlp.py --output_dir outputs/vlp-images) or pass "
            "--vlp; the quality figures need real embeddings."
        )
    else:
        model = RagCaptionerModel.from_dual_encoder(args.vlp).eval()
        image_processor = AutoImageProcessor.from_pretrained(args.vlp)
    image_size = model.config.retriever_config.vision_config.image_size
    dataset = make_shapes_dataset(args.quality_images, seed=0, image_size=image_size)
    captions_per_image = dataset["captions"]
    captions = [caption for image_captions in captions_per_image for caption in image_captions]

    def encode(subset: list[str]) -> np.ndarray:
        return np.concatenate(
            [model.embed_captions(subset[i : i + args.build_batch]).numpy() for i in range(0, len(subset), args.build_batch)]
        )

    # Throughput on the first --build-captions captions, encoding alone and the full build taking turns (after a
    # warm-up) so a busy moment of a shared machine hits both; the datastore for part 2 is then encoded once.
    subset = captions[: args.build_captions]
    encode(subset[: args.build_batch])
    encode_times, build_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        encode(subset)
        encode_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.retriever.build(subset, batch_size=args.build_batch, show_progress=False)
        build_times.append(time.perf_counter() - start)
    encode_seconds, build_seconds = statistics.median(encode_times), statistics.median(build_times)
    embeddings = encode(captions)

    rows = np.random.default_rng(1).choice(len(dataset), size=min(args.queries, len(dataset)), replace=False)
    images = list(dataset.select(rows)["image"])
    with torch.no_grad():
        pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
        queries = model.get_image_embeddings(model.get_image_tokens(pixel_values)).numpy()
    own_captions = [set(captions_per_image[row]) for row in rows]
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return model, captions, embeddings.astype(np.float32), queries, own_captions, len(subset), encode_seconds, build_seconds


def tiny_untrained_captioner():
    """`--quick`: a 32-wide untrained VLP and decoder, so the smoke run needs no trained checkpoint."""
    from transformers import GPT2Config

    from configuration import RagCaptionerConfig, VLPConfig
    from modeling import RagCaptionerModel
    from train.backbones import load_image_processor, load_tokenizer, tiny_text_config, tiny_vision_config

    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    config = RagCaptionerConfig(
        retriever_config=VLPConfig(
            vision_config=tiny_vision_config(image_size=32, patch_size=8, hidden_size=32, num_layers=1),
            sequence_config=None,
            text_config=tiny_text_config(vocab_size=len(tokenizer), hidden_size=32, num_layers=1),
            pooling_hidden_size=32, num_pooling_heads=2, num_latents=8, projection_dim=32, matryoshka_dims=[32, 16],
        ),
        decoder_config=GPT2Config(
            vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=101,
            eos_token_id=102, pad_token_id=0,
        ),
    )
    model = RagCaptionerModel(config)
    model.set_tokenizers(tokenizer, tokenizer)
    return model.eval(), load_image_processor(None, 32)


def rag_training_step_seconds(model, batch_size: int, repeats: int) -> float:
    """One optimisation step of the RAG captioner on random inputs of the default shapes (frozen VLP, as trained)."""
    config = model.config
    model.train()
    image_size = config.retriever_config.vision_config.image_size
    length = config.max_caption_tokens + 2
    vocab = config.decoder_config.vocab_size
    batch = dict(
        input_ids=torch.randint(1000, vocab, (batch_size, length)),
        attention_mask=torch.ones(batch_size, length, dtype=torch.long),
        labels=torch.randint(1000, vocab, (batch_size, length)),
        pixel_values=torch.randn(batch_size, 3, image_size, image_size),
        retrieved_embeds=torch.nn.functional.normalize(torch.randn(batch_size, config.num_retrieved, config.retriever_config.projection_dim), dim=-1),
        retrieved_mask=torch.ones(batch_size, config.num_retrieved, dtype=torch.bool),
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    seconds = median_seconds(step, repeats)
    model.eval()
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--vlp", default=str(REPO_ROOT / "outputs" / "vlp-images" / "final"))
    parser.add_argument("--quality-images", type=int, default=10_000, help="pictures whose captions form the VLP datastore")
    parser.add_argument("--queries", type=int, default=1024, help="VLP image queries for recall")
    parser.add_argument("--entries", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--hnsw-max-entries", type=int, default=200_000)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobes", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--ef-searches", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--search-dim", type=int, default=64)
    parser.add_argument("--refine-factors", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--recall-target", type=float, default=0.95, help="recall@10 the defaults must reach")
    parser.add_argument("--build-batch", type=int, default=512)
    parser.add_argument("--build-captions", type=int, default=10_000, help="captions timed for the build throughput")
    parser.add_argument(
        "--matryoshka-factories", nargs="+", default=["Flat", "SQ8", "PQ16"],
        help="indexes of the --search-dim prefix, each re-ranked at full dim (Flat with every --refine-factors)",
    )
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    if args.quick:
        args.quality_images, args.queries, args.entries, args.nlist, args.build_captions = 60, 64, [2000], 16, 100
        args.nprobes, args.ef_searches, args.refine_factors, args.search_dim = [2, 8], [16, 64], [8], 16
        args.matryoshka_factories = ["Flat", "SQ8"]  # PQ training needs more than a smoke run's vectors
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    k, batch = 10, 64

    print(f"Machine: {machine_description()}, faiss {faiss.__version__} with {faiss.omp_get_max_threads()} threads")
    model, captions, data, queries, own, built, encode_seconds, build_seconds = vlp_data(args)
    dim = data.shape[1]
    print_table(
        "Datastore build: VLP text tower + faiss Flat add vs encoding alone",
        ["captions", "encode only captions/s", "build captions/s", "build / encode time"],
        [[built, built / encode_seconds, built / build_seconds, build_seconds / encode_seconds]],
    )

    # ---- quality on VLP embeddings
    flat = build_index(data, "Flat")
    exact_scores, exact_ids = flat.search(queries, k)
    caption_array = np.asarray(captions, dtype=object)

    def r_at_1(ids: np.ndarray) -> float:
        return float(np.mean([caption_array[row[0]] in mine for row, mine in zip(ids, own)]))

    def timed_search(index, vectors: np.ndarray) -> tuple[float, np.ndarray]:
        """Median seconds per batch of 64 queries, and the ids of searching every query."""
        seconds = median_seconds(lambda: index.search(vectors[:batch], k), args.repeats)
        return seconds, index.search(vectors, k)[1]

    flat_seconds, _ = timed_search(flat, queries)
    full_r1 = r_at_1(exact_ids)
    quality_rows = [["Flat", "exact", flat_seconds * 1e3, 1.0, 1.0, 1.0, full_r1]]

    def recalls(ids: np.ndarray) -> list[float]:
        return [tie_aware_recall(ids, exact_scores, queries, data, k), tie_aware_recall(ids[:, :1], exact_scores, queries, data, 1)]

    ivf = build_index(data, ivf_factory(args.nlist))
    for nprobe in args.nprobes:
        set_parameter(ivf, "nprobe", nprobe)
        seconds, ids = timed_search(ivf, queries)
        recall = recalls(ids)
        quality_rows.append([ivf_factory(args.nlist), f"nprobe={nprobe}", seconds * 1e3, seconds / flat_seconds, *recall, r_at_1(ids)])
    hnsw = build_index(data, "HNSW32")
    for ef in args.ef_searches:
        set_parameter(hnsw, "efSearch", ef)
        seconds, ids = timed_search(hnsw, queries)
        recall = recalls(ids)
        quality_rows.append(["HNSW32", f"efSearch={ef}", seconds * 1e3, seconds / flat_seconds, *recall, r_at_1(ids)])
    refine = 8 if 8 in args.refine_factors else args.refine_factors[-1]
    for factory in args.matryoshka_factories:
        for factor in args.refine_factors if factory == "Flat" else [refine]:
            prefix = build_index(data, factory, search_dim=args.search_dim, refine_factor=factor)
            seconds, ids = timed_search(prefix, queries)
            quality_rows.append([f"{factory} @ {args.search_dim} dims + re-rank", f"refine_factor={factor}", seconds * 1e3, seconds / flat_seconds, *recalls(ids), r_at_1(ids)])
    print_table(
        f"Quality on VLP embeddings: {len(data)} captions of {args.quality_images} pictures, {len(queries)} image "
        f"queries, dim {dim}; time per batch of {batch} queries",
        ["index", "setting", "ms / batch", "time vs Flat", f"recall@{k} vs Flat", "recall@1 vs Flat", "R@1 (own caption)"],
        quality_rows,
    )

    from modeling.modeling_retriever import default_search_parameters

    defaults = {"ivf": default_search_parameters(ivf), "hnsw": default_search_parameters(hnsw)}
    lines = []
    for name, index in (("ivf", ivf), ("hnsw", hnsw)):
        faiss.ParameterSpace().set_index_parameters(index, defaults[name])
        recall = tie_aware_recall(index.search(queries, k)[1], exact_scores, queries, data, k)
        meets = "meets" if recall >= args.recall_target else "misses"
        lines.append(f"{name.upper()} {defaults[name]} (recall@{k} {recall:.3f}, {meets} the {args.recall_target} target)")
    print(f"\nThe retriever's defaults (default_search_parameters), used below: {'; '.join(lines)}")

    # ---- speed on random unit vectors
    speed_rows, flat_at_largest, best_at_largest = [], None, None
    queries_random = random_unit(batch, dim, seed=1)
    for entries in args.entries:
        vectors = random_unit(entries, dim, seed=0)
        indexes = [("Flat", "exact", lambda: build_index(vectors, "Flat"))]
        indexes.append((ivf_factory(args.nlist), defaults["ivf"], lambda: build_index(vectors, ivf_factory(args.nlist))))
        indexes.append(("HNSW32", defaults["hnsw"], (lambda: build_index(vectors, "HNSW32")) if entries <= args.hnsw_max_entries else None))
        for factory in args.matryoshka_factories:
            indexes.append((f"{factory} @ {args.search_dim} dims + re-rank", f"refine_factor={refine}", lambda factory=factory: build_index(vectors, factory, args.search_dim, refine)))
        indexes.append((f"{ivf_factory(args.nlist)} @ {args.search_dim} dims + re-rank", f"{defaults['ivf']}, refine_factor={refine}", lambda: build_index(vectors, ivf_factory(args.nlist), args.search_dim, refine)))
        flat_seconds = None
        for name, setting, make in indexes:
            if make is None:
                speed_rows.append([entries, name, setting, "not built", "", ""])
                continue
            start = time.perf_counter()
            index = make()
            build = time.perf_counter() - start
            seconds = median_seconds(lambda: index.search(queries_random, k), args.repeats)
            flat_seconds = flat_seconds or seconds
            speed_rows.append([entries, name, setting, build, seconds * 1e3, flat_seconds / seconds])
            if entries == args.entries[-1]:
                if name == "Flat":
                    flat_at_largest = seconds
                elif name.startswith("IVF") and "dims" not in name:
                    best_at_largest = (name, setting, seconds)
            del index
        del vectors
    print_table(
        f"Search speed on random unit vectors, dim {dim}, batches of {batch} queries, k={k} (recall on random data is "
        "not representative: see the VLP table)",
        ["entries", "index", "setting", "build s", "ms / batch", "speed-up vs Flat"],
        speed_rows,
    )

    # ---- share of a training step
    step_batch = 4 if args.quick else batch
    step = rag_training_step_seconds(model, step_batch, args.repeats)
    share_rows = [[args.entries[-1], "Flat", "exact", flat_at_largest * 1e3, step * 1e3, flat_at_largest / step]]
    if best_at_largest:
        name, setting, seconds = best_at_largest
        share_rows.append([args.entries[-1], name, setting, seconds * 1e3, step * 1e3, seconds / step])
    print_table(
        f"Search of {batch} queries as a share of one RAG captioner training step (batch {step_batch}, default config "
        "around the trained VLP)",
        ["entries", "index", "setting", "search ms", "training step ms", "search / step"],
        share_rows,
    )


if __name__ == "__main__":
    main()
