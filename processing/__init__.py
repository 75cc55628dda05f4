from .augmentation_pose import PoseAugmentation
from .processing_mmcot import MMCoTPrediction, MMCoTProcessor
from .processing_pose import prepare_sequences
from .processing_rag_captioner import RagCaptionerProcessor
from .processing_sign2text import Sign2TextProcessor
from .processing_vlp import VLPProcessor

__all__ = ["MMCoTPrediction", "MMCoTProcessor", "PoseAugmentation", "RagCaptionerProcessor", "Sign2TextProcessor", "VLPProcessor", "prepare_sequences"]
