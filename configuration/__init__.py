from .configuration_sequence import SequenceEncoderConfig
from .configuration_vlp import VLPConfig

__all__ = ["SequenceEncoderConfig", "VLPConfig"]
