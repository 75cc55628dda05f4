from .configuration_mmcot import MMCoTConfig
from .configuration_rag_captioner import RagCaptionerConfig
from .configuration_sequence import SequenceEncoderConfig
from .configuration_sign2text import Sign2TextConfig
from .configuration_vlp import VLPConfig

__all__ = ["MMCoTConfig", "RagCaptionerConfig", "SequenceEncoderConfig", "Sign2TextConfig", "VLPConfig"]
