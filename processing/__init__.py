from .processing_pose import prepare_sequences
from .processing_vlp import VLPProcessor

__all__ = ["VLPProcessor", "prepare_sequences"]
