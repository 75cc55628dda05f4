from .processing_pose import prepare_sequences
from .processing_sign2text import Sign2TextProcessor
from .processing_vlp import VLPProcessor

__all__ = ["Sign2TextProcessor", "VLPProcessor", "prepare_sequences"]
