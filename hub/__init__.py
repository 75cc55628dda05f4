"""Bundle the repository's models into self-contained Hub checkpoints, write their model cards, and push them."""

from .bundle import collect_source_files, save_for_hub, verify_checkpoint
from .model_card import build_model_card, pipeline_card_fields
from .push import push_to_hub

__all__ = ["save_for_hub", "verify_checkpoint", "collect_source_files", "build_model_card", "pipeline_card_fields", "push_to_hub"]
