from .modeling_vlp import VLPModel, VLPOutput, VLPPreTrainedModel

__all__ = ["VLPModel", "VLPOutput", "VLPPreTrainedModel"]
