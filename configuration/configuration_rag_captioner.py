"""Configuration of the RAG captioner: a frozen dual-encoder retriever, a faiss caption datastore, a cross-attending
decoder."""

from transformers import AutoConfig, CLIPConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_vlp import VLPConfig

FUSION_TYPES = ("concat", "prompt")
INDEX_METRICS = ("inner_product", "l2")

# The VLP dual encoder the default run trains (train/vlp.py defaults): tiny CLIP-ViT image tower at 64 px and tiny BERT
# text tower, both 128 wide; a 128-dim embedding whose 64/32/16 prefixes are trained too.
TINY_VISION_DEFAULTS = {
    "image_size": 64,
    "patch_size": 8,
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 512,
}
TINY_RETRIEVER_DEFAULTS = {
    "vision_config": {"model_type": "clip_vision_model", **TINY_VISION_DEFAULTS},
    "text_config": {
        "model_type": "bert",
        "vocab_size": 30522,
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "max_position_embeddings": 128,
    },
    "pooling_hidden_size": 128,
    "num_pooling_heads": 4,
    "projection_dim": 128,
    "matryoshka_dims": [128, 64, 32, 16],
}


class RetrieverVLPConfig(VLPConfig):
    r"""
    [`VLPConfig`] of the captioner's retriever, with one difference: without arguments it has a (tiny) image tower
    instead of raising. transformers builds a nested config's class without arguments when it saves the outer config
    (to find which fields differ from the defaults), and a `VLPConfig` without a visual side refuses to exist.
    """

    sub_configs_defaults = {
        **VLPConfig.sub_configs_defaults,
        "vision_config": SubConfigSpec(AutoConfig, model_type="clip_vision_model", init_kwargs=TINY_VISION_DEFAULTS),
    }


class RetrieverConfigSpec(SubConfigSpec):
    """The retriever is the project's VLP dual encoder or a transformers CLIP model: a saved config with
    `model_type: "clip"` becomes a [`CLIPConfig`], anything else a [`RetrieverVLPConfig`]."""

    def create_subconfig(self, key, subconfig=None, **kwargs):
        if isinstance(subconfig, dict) and subconfig.get("model_type") == CLIPConfig.model_type:
            return CLIPConfig(**subconfig), kwargs
        return super().create_subconfig(key, subconfig, **kwargs)


def retriever_matryoshka_dims(retriever_config: PreTrainedConfig) -> list[int]:
    """The embedding prefixes the retriever was trained to use alone: a VLP model's `matryoshka_dims`; a CLIP model
    only has its full `projection_dim`."""
    return list(getattr(retriever_config, "matryoshka_dims", None) or [retriever_config.projection_dim])


def load_retriever_config(retriever_model_name_or_path) -> VLPConfig | CLIPConfig:
    """The config of the dual encoder in a folder or Hub id: a transformers CLIP checkpoint or this project's VLP model;
    anything else is refused, naming what is supported."""
    config_dict, _ = PreTrainedConfig.get_config_dict(retriever_model_name_or_path)
    model_type = config_dict.get("model_type")
    if model_type == CLIPConfig.model_type:
        return CLIPConfig.from_pretrained(retriever_model_name_or_path)
    if model_type != VLPConfig.model_type:
        raise ValueError(
            f"{retriever_model_name_or_path} holds a {model_type!r} model; the retriever must be this project's VLP "
            "dual encoder or a transformers CLIP checkpoint (e.g. openai/clip-vit-base-patch32)."
        )
    return VLPConfig.from_pretrained(retriever_model_name_or_path)


# A small GPT-2 with cross-attention over the project's uncased WordPiece vocabulary ([PAD]=0, [CLS]=101, [SEP]=102).
TINY_DECODER_DEFAULTS = {
    "vocab_size": 30522,
    "n_positions": 256,
    "n_embd": 256,
    "n_layer": 3,
    "n_head": 4,
    "add_cross_attention": True,
    "bos_token_id": 101,
    "eos_token_id": 102,
    "pad_token_id": 0,
    "tie_word_embeddings": True,
}


class RagCaptionerConfig(PreTrainedConfig):
    r"""
    A retrieval-augmented captioner. A frozen dual encoder is the retriever (the project's VLP model, or a
    transformers CLIP model): its text tower embeds the caption datastore into a faiss index, its image tower embeds
    the query image, and the nearest captions are fed to a causal language model that cross-attends to the same image
    tower's token states.

    Args:
        retriever_config (`dict`, [`VLPConfig`] or [`CLIPConfig`], *optional*):
            The VLP dual encoder (it must have an image tower), or a transformers CLIP model used as it was
            pretrained (SmallCap's retriever: e.g. `openai/clip-vit-base-patch32`, its CLS embedding searching its
            text embeddings). Defaults to the tiny VLP model the default VLP run trains; real runs take the config of
            the checkpoint they load.
        decoder_config (`dict` or `PreTrainedConfig`, *optional*):
            Any transformers causal LM that supports `add_cross_attention` (GPT-2 by default, BERT, RoBERTa, ...).
            Defaults to a 3-layer, 256-wide GPT-2 over the uncased WordPiece vocabulary, small enough to train on two
            CPU cores. `add_cross_attention` is switched on whatever the given config says: the decoder reads the
            image through it.
        fusion (`str`, defaults to `"concat"`):
            How retrieved captions reach the decoder.
            `"concat"` (seed design): the VLP text embeddings of the k captions go through `retrieval_projection`,
            are scaled by a learnable factor and appended to the projected image states; the decoder cross-attends
            to the concatenation.
            `"prompt"` (SmallCap): the captions are written into a text prompt ("similar images show … . this image
            shows") that the decoder reads before it writes; only the image goes through cross-attention.
        num_retrieved (`int`, defaults to 4):
            k, the captions retrieved per image; SmallCap's value. More neighbours add information but, in the
            prompt variant, lengthen every sequence the decoder reads.
        index_factory (`str`, defaults to `"Flat"`):
            faiss `index_factory` string of the search index. `"Flat"` is exact; at a million captions one batch of
            64 queries takes 1.7-1.9 s on one CPU thread, a third of a training step. `"IVF1024,Flat"` (trained on
            the datastore at build time) takes 13-34 ms there and, at its default nprobe, finds 99.7 % of Flat's
            top 10 on 50k VLP caption embeddings; `"HNSW32"` searches fast too but builds slowly (22-36 s per 100k
            captions on one thread). Measured by `benchmarks/bench_faiss.py`.
        index_metric (`str`, defaults to `"inner_product"`):
            `"inner_product"` (cosine similarity on the normalised VLP embeddings, the similarity the VLP was trained
            with; higher scores are closer) or `"l2"` (squared distance, lower is closer; same ranking on unit vectors).
        index_search_parameters (`str`, defaults to `""`):
            faiss `ParameterSpace` settings applied after building or loading, e.g. `"nprobe=32"` for IVF or
            `"efSearch=128"` for HNSW. Empty: the retriever's measured defaults (`default_search_parameters`: IVF
            nprobe = nlist / 64, HNSW efSearch = 32; nothing for the exact flat index).
        search_dim (`int`, *optional*):
            Matryoshka search: the index searches the first `search_dim` coordinates (re-normalised) of the
            embeddings, and the `refine_factor × k` best candidates are re-scored exactly at full dimension
            (faiss `IndexRefineFlat`). Must be one of the retriever's `matryoshka_dims`, the prefixes it was trained
            to use alone (a CLIP retriever has none). `None` searches at full dimension.
        refine_factor (`int`, defaults to 8):
            With `search_dim`, candidates re-scored per retrieved caption. Re-ranking recovers the exact full-dim
            top-k whenever those captions are among the prefix search's `refine_factor × k` best.
        image_projection_dim (`int`, defaults to 0):
            Hidden width of the image projection (image tower states → decoder width): 0 is one linear map; a
            positive value is Linear→ReLU→Linear of that width.
        retrieval_projection_dim (`int`, defaults to 256):
            Hidden width of the retrieval projection (VLP embedding → decoder width), `"concat"` only; 0 is one
            linear map. An MLP by default because one pooled vector per caption has to become a token the decoder can
            read, a larger step than re-widening the image tower's token states.
        retrieval_scale_init (`float`, defaults to 1.0):
            Initial value of the learnable factor on the retrieval tokens (`"concat"`), which lets training weigh
            retrieval against the image instead of fixing the balance.
        retriever_lambda (`float`, defaults to 0.1):
            Weight of the cosine penalty `1 - cos(mean image projection, mean retrieval projection)`, which keeps the
            two projections in one space (`"concat"` only). It is the peak of the schedule
            `retriever_lambda_schedule` (linear warm-up, then cosine decay) when the trainer passes the scheduled
            value to `forward`, and the constant weight otherwise.
        num_frozen_decoder_layers (`int`, defaults to 1):
            The first decoder layers kept fixed (the seed design freezes the first): with a pretrained decoder they
            keep its low-level token features; with a decoder trained from scratch a frozen layer is a fixed random
            mixing layer. The VLP retriever is always frozen: the index holds its embeddings.
        index_file_name (`str`, defaults to `"retrieval_index.faiss"`):
            File name (never a path) of the faiss index inside the model folder or Hub repository.
        datastore_file_name (`str`, defaults to `"retrieval_datastore.jsonl"`):
            File name of the caption datastore: one JSON object `{"caption": ...}` per line, line i is index id i.
        retriever_tokenizer_folder (`str`, defaults to `"retriever_tokenizer"`):
            Sub-folder holding the VLP text tower's tokenizer, which `add`/`build` need to embed new captions.
        decoder_tokenizer_folder (`str`, defaults to `"decoder_tokenizer"`):
            Sub-folder holding the decoder's tokenizer, which the `"prompt"` variant needs to write retrieved captions
            into its prompt at generation time.
        max_caption_tokens (`int`, defaults to 40):
            Captions are cut to this many tokens, targets and retrieved ones alike (COCO captions rarely exceed 25
            words); `generate` writes at most this many tokens plus the end token by default. The processor's
            `max_caption_length` must equal it, so that prompts at generation match those seen in training.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialiser of the projections.
    """

    model_type = "rag_captioner"
    sub_configs_defaults = {
        "retriever_config": RetrieverConfigSpec(RetrieverVLPConfig, init_kwargs=TINY_RETRIEVER_DEFAULTS),
        "decoder_config": SubConfigSpec(AutoConfig, model_type="gpt2", init_kwargs=TINY_DECODER_DEFAULTS),
    }

    retriever_config: dict | PreTrainedConfig | None = None
    decoder_config: dict | PreTrainedConfig | None = None
    fusion: str = "concat"
    num_retrieved: int = 4
    index_factory: str = "Flat"
    index_metric: str = "inner_product"
    index_search_parameters: str = ""
    search_dim: int | None = None
    refine_factor: int = 8
    image_projection_dim: int = 0
    retrieval_projection_dim: int = 256
    retrieval_scale_init: float = 1.0
    retriever_lambda: float = 0.1
    num_frozen_decoder_layers: int = 1
    index_file_name: str = "retrieval_index.faiss"
    datastore_file_name: str = "retrieval_datastore.jsonl"
    retriever_tokenizer_folder: str = "retriever_tokenizer"
    decoder_tokenizer_folder: str = "decoder_tokenizer"
    max_caption_tokens: int = 40
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.retriever_config.vision_config is None:
            raise ValueError("retriever_config has no image tower (vision_config is None); the captioner needs one.")
        if not isinstance(self.retriever_config, (RetrieverVLPConfig, CLIPConfig)):  # e.g. a loaded VLPModel's config
            self.retriever_config = RetrieverVLPConfig.from_dict(self.retriever_config.to_dict())
        self.decoder_config.add_cross_attention = True
        for name, value, allowed in (
            ("fusion", self.fusion, FUSION_TYPES),
            ("index_metric", self.index_metric, INDEX_METRICS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
        for name in ("num_retrieved", "refine_factor", "max_caption_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("image_projection_dim", "retrieval_projection_dim", "num_frozen_decoder_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or positive, got {getattr(self, name)}.")
        if self.num_frozen_decoder_layers > self.decoder_config.num_hidden_layers:
            raise ValueError(
                f"num_frozen_decoder_layers ({self.num_frozen_decoder_layers}) exceeds the decoder's "
                f"{self.decoder_config.num_hidden_layers} layers."
            )
        if self.retriever_lambda < 0:
            raise ValueError(f"retriever_lambda must be non-negative, got {self.retriever_lambda}.")
        trained_dims = retriever_matryoshka_dims(self.retriever_config)
        if self.search_dim is not None and self.search_dim not in trained_dims:
            raise ValueError(
                f"search_dim {self.search_dim} is not one of the retriever's trained Matryoshka dims {trained_dims}; "
                "an untrained prefix retrieves noise."
            )
        for name in ("index_file_name", "datastore_file_name", "retriever_tokenizer_folder", "decoder_tokenizer_folder"):
            value = getattr(self, name)
            if not value or "/" in value or "\\" in value or value in (".", ".."):
                raise ValueError(f"{name} must be a plain file or folder name, not a path; got {value!r}.")

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The decoder's config: `generate` sizes its caches and reads `vocab_size` and special tokens from it."""
        return self.decoder_config


__all__ = ["RagCaptionerConfig", "RetrieverVLPConfig", "load_retriever_config", "retriever_matryoshka_dims"]
