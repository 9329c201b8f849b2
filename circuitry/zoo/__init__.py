"""The model zoo: synthetic language, tokenizer, pretraining, shipped weights, ``load_model``."""

from circuitry.zoo.registry import list_models, load_model, save_model, zoo_models

__all__ = ["list_models", "load_model", "save_model", "zoo_models"]
