"""mmreason: a model zoo of multimodal reasoning models.

``mmreason.load(folder)`` rebuilds an exported model offline; the registry
(``list_models``, ``create_model``) names the built-in configurations.
Importing the package registers every built-in family.
"""

import mmreason.models  # noqa: F401  (registers the built-in families and models)
from mmreason.build import create_model
from mmreason.export import load_export as load
from mmreason.zoo import list_models, register_model

__all__ = ["load", "create_model", "list_models", "register_model"]
