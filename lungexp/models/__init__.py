"""3D classification networks for nodule patches, their complexity and pretrained-weight loading.

Every network takes ``(B, C, D, H, W)`` and returns logits ``(B, num_classes)``; its classifier is the
attribute ``head`` and its first convolution is ``stem_conv`` (the contract: :mod:`lungexp.models.layers`). Covariates
join any of them by late fusion (:mod:`lungexp.models.fusion`); :class:`TabularNet` reads covariates alone.
"""

from lungexp.models.cnn3d import CNN3D
from lungexp.models.complexity import count_flops, count_parameters, model_summary
from lungexp.models.densenet3d import DenseNet3D
from lungexp.models.pretrained import PretrainedReport, PretrainedWeightsError, load_pretrained
from lungexp.models.resnet3d import CBAMResNet3D, ResNet3D, SEResNet3D
from lungexp.models.tabular import TabularNet

__all__ = [
    "CNN3D",
    "CBAMResNet3D",
    "DenseNet3D",
    "PretrainedReport",
    "PretrainedWeightsError",
    "ResNet3D",
    "SEResNet3D",
    "TabularNet",
    "count_flops",
    "count_parameters",
    "load_pretrained",
    "model_summary",
]
