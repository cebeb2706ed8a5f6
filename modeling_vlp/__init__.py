"""The VLP model: configuration, encoder, pretraining heads and task models.

`EXPORTED_FILES` are copied verbatim into saved checkpoints (with the processor's files from `vlp.processing`);
they import only torch, transformers and each other, so a checkpoint loads with `trust_remote_code=True`
where this package is not installed.
"""

from .configuration_vlp import VLP_AUTO_MAP, VLPConfig
from .modeling_vlp import (
    VLPForPreTraining,
    VLPForPreTrainingOutput,
    VLPModel,
    VLPModelOutput,
    VLPPreTrainedModel,
)
from .modeling_vlp_tasks import (
    VLPCaptioningOutput,
    VLPForConditionalGeneration,
    VLPForImageTextRetrieval,
    VLPForQuestionAnswering,
    VLPImageTextRetrievalOutput,
    VLPQuestionAnsweringOutput,
    VLPRetrievalScores,
)

EXPORTED_FILES = ("configuration_vlp.py", "modeling_vlp.py", "losses_vlp.py", "modeling_vlp_tasks.py")

__all__ = [
    "EXPORTED_FILES",
    "VLP_AUTO_MAP",
    "VLPCaptioningOutput",
    "VLPConfig",
    "VLPForConditionalGeneration",
    "VLPForImageTextRetrieval",
    "VLPForPreTraining",
    "VLPForPreTrainingOutput",
    "VLPForQuestionAnswering",
    "VLPImageTextRetrievalOutput",
    "VLPModel",
    "VLPModelOutput",
    "VLPPreTrainedModel",
    "VLPQuestionAnsweringOutput",
    "VLPRetrievalScores",
]
