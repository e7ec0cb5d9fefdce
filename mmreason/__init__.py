"""mmreason: a model zoo of multimodal reasoning models.

``mmreason.load(folder)`` rebuilds an exported model offline; the registry
(``list_models``, ``create_model``) names the built-in configurations.
"""

from mmreason.export import load_export as load
from mmreason.zoo import create_model, list_models, register_model

__all__ = ["load", "create_model", "list_models", "register_model"]
