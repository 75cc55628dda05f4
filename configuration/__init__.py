from .configuration_rag_captioner import RagCaptionerConfig
from .configuration_sequence import SequenceEncoderConfig
from .configuration_sign2text import Sign2TextConfig
from .configuration_vlp import VLPConfig

__all__ = ["RagCaptionerConfig", "SequenceEncoderConfig", "Sign2TextConfig", "VLPConfig"]
