"""What a modality is: the manifest field(s) that carry it, how one value becomes a tensor, how a
list of those pads into a batch, the embedder that turns the batch entries into tokens, and its
ONNX inputs.

The general code reads a modality only through this class (the dataset and ``collate``, the
manifest checker, ``ModelConfig.validate``, the backbone, pretraining's mismatched pairs, the ONNX
export, the classify task), so a new modality is one file defining a ``Modality`` plus one line in
``omniformer.registry.MODALITIES`` (or ``register_modality`` at run time); docs/adding-a-modality.md
walks through one.

Its batch entries: ``batch[name]`` (B, ...) and ``batch[name + "_mask"]``, bool and True on real
positions: (B,) for one fixed-size value per sample (an image), (B, T) for a sequence (text, audio).
A sample without the modality has an all-False mask row; a batch where no sample has it has
neither entry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..model.encoders import Embedder

__all__ = ["Modality", "Embedder", "pad_last_axis", "stack_present"]


def pad_last_axis(values: Sequence[Tensor | None], pad_value: float = 0) -> tuple[Tensor, Tensor]:
    """Sequences (..., T_i) right-padded along their last axis into (B, ..., T) with ``pad_value``,
    and their (B, T) mask; None (a sample without the modality) is an all-padding row."""
    first = next(v for v in values if v is not None)
    length = max(v.shape[-1] for v in values if v is not None)
    out = torch.full((len(values), *first.shape[:-1], length), pad_value, dtype=first.dtype)
    mask = torch.zeros((len(values), length), dtype=torch.bool)
    for i, v in enumerate(values):
        if v is not None:
            out[i, ..., : v.shape[-1]] = v
            mask[i, : v.shape[-1]] = True
    return out, mask


def stack_present(values: Sequence[Tensor | None]) -> tuple[Tensor, Tensor]:
    """Same-shape values stacked into (B, ...), zeros for a sample without one, and the (B,) mask."""
    shape = next(v for v in values if v is not None).shape
    return (torch.stack([v if v is not None else torch.zeros(shape) for v in values]),
            torch.tensor([v is not None for v in values]))


class Modality:
    """One kind of input. Subclass it, set the class attributes, override the methods that differ.

    A modality with no state reads a file in ``load``; one with augmentation or a tokenizer
    overrides ``preprocessor`` instead (the built-ins wrap their preprocessor classes so).
    """

    name: str = ""                          # model.modalities entry and batch key (mask: <name>_mask)
    fields: tuple[str, ...] = ()            # manifest fields that carry it; the first is the default
    embedder: type[Embedder] | None = None  # batch entries -> (tokens (B, N, width), mask (B, N))
    Config: type | None = None              # a dataclass of its options, ``model.options.<name>``
    files: bool = True                      # field values are paths relative to the manifest (text: False)
    media: bool = True                      # ``data check`` decodes its files (``check_file``), not only finds them
    pad_value: float = 0                    # what padded positions of batch[name] hold (the mask says which)
    value_axes: dict[int, str] = {0: "batch"}  # ONNX dynamic axes of batch[name] ...
    mask_axes: dict[int, str] = {0: "batch"}   # ... and of batch[name + "_mask"]

    # -- identity --------------------------------------------------------------------------

    @property
    def mask_key(self) -> str:
        return f"{self.name}_mask"

    @property
    def batch_keys(self) -> tuple[str, str]:
        """The batch entries that make up this modality (swapped together in a mismatched pair)."""
        return self.name, self.mask_key

    def check(self) -> None:
        """Raise ValueError when the declaration is incomplete (called by ``register_modality``)."""
        where = f"modality {self.name or type(self).__name__!r}"
        if not self.name.isidentifier():
            raise ValueError(f"{where}: name must be an identifier (it is a batch key and a config key)")
        if not self.fields or not all(isinstance(f, str) and f for f in self.fields):
            raise ValueError(f"{where}: fields must name at least one manifest field")
        if not (isinstance(self.embedder, type) and issubclass(self.embedder, Embedder)):
            raise ValueError(f"{where}: embedder must be a subclass of omniformer.model.encoders.Embedder")

    def options(self, model) -> Any:
        """This modality's ``model.options.<name>`` as its ``Config`` (defaults where absent)."""
        given = (getattr(model, "options", None) or {}).get(self.name, {})
        if self.Config is None:
            return dict(given)
        if isinstance(given, self.Config):
            return given
        from ..config import ConfigError, from_dict
        try:
            return from_dict(self.Config, given)
        except ConfigError as e:
            raise ConfigError(f"options.{self.name}: {e}") from None

    # -- data ------------------------------------------------------------------------------

    def load(self, source: Any, model) -> Tensor:
        """One value (a resolved file path, or what a caller passes: bytes, an array...) as the
        tensor this modality's embedder reads, for ``model`` (a ModelConfig)."""
        raise NotImplementedError(f"modality {self.name!r} defines neither load nor preprocessor")

    def preprocessor(self, model, data=None, tokenizer=None) -> Callable[[Any], Tensor]:
        """What turns one value into its tensor for ``model``. ``data`` (a DataConfig) is given
        when training: the augmentations it asks for apply. ``tokenizer``: for token ids."""
        return _Bound(self, model)

    def collate(self, values: Sequence[Tensor | None], pad_value: float | None = None) -> tuple[Tensor, Tensor]:
        """Pad the items' tensors (None: a sample without this modality) into ``(batch[name],
        batch[name_mask])``; by default sequences along their last axis, mask (B, T)."""
        return pad_last_axis(values, self.pad_value if pad_value is None else pad_value)

    def check_file(self, path: Path, model) -> None:
        """Raise ValueError or OSError when ``path`` cannot be read as this modality
        (``data check``); by default it must preprocess."""
        self.preprocessor(model)(path)

    # -- export ----------------------------------------------------------------------------

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The ONNX dynamic axes of its two inputs."""
        return {self.name: dict(self.value_axes), self.mask_key: dict(self.mask_axes)}

    def example_inputs(self, model, batch: int, generator: torch.Generator,
                       length: int | None = None) -> dict[str, Tensor]:
        """Random but well-formed ``{name, name_mask}`` for ``model`` (to trace an export with):
        batch ``batch``, sequences of ``length`` with some padding where it has a length."""
        raise NotImplementedError(f"modality {self.name!r} has no example inputs, so it cannot be exported")

    def describe(self, model) -> dict[str, Any]:
        """What a caller of an exported model must do to a raw input (the ONNX sidecar says it)."""
        return {}

    def __repr__(self) -> str:
        return f"<modality {self.name} fields={list(self.fields)}>"


class _Bound:
    """``modality.load`` with its model config bound: a picklable preprocessor (DataLoader workers)."""

    def __init__(self, modality: Modality, model):
        self.modality, self.model = modality, model

    def __call__(self, source: Any) -> Tensor:
        return self.modality.load(source, self.model)
