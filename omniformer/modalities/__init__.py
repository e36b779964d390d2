"""Modalities: what each kind of input is to the data layer, the model and the exporter (see
``base.Modality``). The registered ones are ``omniformer.registry.MODALITIES``."""
from .base import Embedder, Modality, pad_last_axis, stack_present

__all__ = ["Modality", "Embedder", "pad_last_axis", "stack_present"]
