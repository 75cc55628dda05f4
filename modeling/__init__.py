from .modeling_mmcot import MMCoTForConditionalGeneration, MMCoTOutput, MMCoTPreTrainedModel
from .modeling_rag_captioner import RagCaptionerModel, RagCaptionerOutput, RagCaptionerPreTrainedModel
from .modeling_retriever import CaptionRetriever, RetrievedCaptions
from .modeling_sign2text import Sign2TextModel, Sign2TextOutput, Sign2TextPreTrainedModel
from .modeling_vlp import VLPModel, VLPOutput, VLPPreTrainedModel

__all__ = [
    "CaptionRetriever",
    "MMCoTForConditionalGeneration",
    "MMCoTOutput",
    "MMCoTPreTrainedModel",
    "RagCaptionerModel",
    "RagCaptionerOutput",
    "RagCaptionerPreTrainedModel",
    "RetrievedCaptions",
    "Sign2TextModel",
    "Sign2TextOutput",
    "Sign2TextPreTrainedModel",
    "VLPModel",
    "VLPOutput",
    "VLPPreTrainedModel",
]
