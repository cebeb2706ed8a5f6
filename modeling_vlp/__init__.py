"""The VLP model: configuration, encoder, pretraining heads and task models.

`EXPORTED_FILES` are copied verbatim into saved checkpoints (with the processor's files from `vlp.processing`);
they import only torch, transformers and each other, so a checkpoint loads with `trust_remote_code=True`
where this package is not installed.

Importing this package registers `VLPConfig` and the models with the transformers Auto classes, so that
`AutoConfig` / `AutoModel*.from_pretrained(folder)` load a VLP checkpoint from the installed code without
`trust_remote_code`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
)

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

# The Auto class of every model, as in `VLP_AUTO_MAP` (the map a saved checkpoint carries for remote code).
AUTO_MODEL_CLASSES = (
    (AutoModel, VLPModel),
    (AutoModelForPreTraining, VLPForPreTraining),
    (AutoModelForVisualQuestionAnswering, VLPForQuestionAnswering),
    (AutoModelForImageTextToText, VLPForConditionalGeneration),
    (AutoModelForZeroShotImageClassification, VLPForImageTextRetrieval),
)

AutoConfig.register(VLPConfig.model_type, VLPConfig, exist_ok=True)
for _auto_class, _model_class in AUTO_MODEL_CLASSES:
    _auto_class.register(VLPConfig, _model_class, exist_ok=True)
del _auto_class, _model_class

EXPORTED_FILES = ("configuration_vlp.py", "modeling_vlp.py", "losses_vlp.py", "modeling_vlp_tasks.py")

__all__ = [
    "AUTO_MODEL_CLASSES",
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
