from .modeling_sign2text import Sign2TextModel, Sign2TextOutput, Sign2TextPreTrainedModel
from .modeling_vlp import VLPModel, VLPOutput, VLPPreTrainedModel

__all__ = ["Sign2TextModel", "Sign2TextOutput", "Sign2TextPreTrainedModel", "VLPModel", "VLPOutput", "VLPPreTrainedModel"]
