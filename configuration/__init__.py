from .configuration_sequence import SequenceEncoderConfig
from .configuration_sign2text import Sign2TextConfig
from .configuration_vlp import VLPConfig

__all__ = ["SequenceEncoderConfig", "Sign2TextConfig", "VLPConfig"]
