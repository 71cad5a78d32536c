"""graphc.nn: the PyTorch model-building API (`import graphc.nn as nn`)."""
from . import functional
from .layers import (CrossEntropyLoss, Dropout, Flatten, Identity, Linear, LogSoftmax, MSELoss, NLLLoss, ReLU,
                     Sequential, Sigmoid, Softmax, Tanh)
from .module import Module
from .parameter import Parameter

__all__ = ["functional", "Module", "Parameter", "Linear", "ReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
           "Dropout", "Flatten", "Identity", "Sequential", "MSELoss", "CrossEntropyLoss", "NLLLoss"]
