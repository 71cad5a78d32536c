"""graphc.nn: the PyTorch model-building API (`import graphc.nn as nn`)."""
from . import functional, init, utils
from .layers import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, Dropout, ELU, Flatten, HuberLoss, Identity, L1Loss,
                     LeakyReLU, Linear, LogSoftmax, ModuleDict, ModuleList, MSELoss, NLLLoss, ParameterList, ReLU,
                     Sequential, Sigmoid, SmoothL1Loss, Softmax, Softplus, Tanh)
from .layers_conv import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout2d,
                          MaxPool2d)
from .module import Module
from .parameter import Parameter
from .transformer import GELU, Embedding, LayerNorm, SiLU

__all__ = ["functional", "init", "Module", "Parameter", "Linear", "ReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
           "Dropout", "Flatten", "Identity", "Sequential", "MSELoss", "CrossEntropyLoss", "NLLLoss", "LeakyReLU", "ELU",
           "Softplus", "L1Loss", "SmoothL1Loss", "HuberLoss", "BCELoss", "BCEWithLogitsLoss", "ModuleList",
           "ModuleDict", "ParameterList", "utils", "Embedding", "LayerNorm", "GELU", "SiLU", "Conv2d", "MaxPool2d",
           "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d", "BatchNorm2d", "Dropout2d"]
