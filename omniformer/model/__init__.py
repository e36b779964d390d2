"""Model code: attention, layers, transformer stacks, per-modality embedders, fusion backbone, shared heads."""
from .attention import MultiHeadAttention, build_attention_mask
from .encoders import AudioEmbedder, Embedder, ImageEmbedder, TextEmbedder
from .fusion import FusionOutput, Omniformer, init_weights
from .heads import ClassifierHead, ContrastiveHead, MaskedPatchHead, MatchingHead, MLMHead
from .layers import FeedForward, LayerNorm, LearnedPositions, SinusoidalPositions, sinusoidal_positions, sinusoidal_positions_2d
from .transformer import Decoder, DecoderBlock, Encoder, EncoderBlock, block_kwargs

__all__ = [
    "MultiHeadAttention", "build_attention_mask",
    "Embedder", "TextEmbedder", "ImageEmbedder", "AudioEmbedder",
    "Omniformer", "FusionOutput", "init_weights",
    "MLMHead", "MatchingHead", "ContrastiveHead", "ClassifierHead", "MaskedPatchHead",
    "FeedForward", "LayerNorm", "LearnedPositions", "SinusoidalPositions", "sinusoidal_positions", "sinusoidal_positions_2d",
    "Encoder", "EncoderBlock", "Decoder", "DecoderBlock", "block_kwargs",
]
