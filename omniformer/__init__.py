"""Omniformer: one multimodal Transformer over text, images and audio.

``from omniformer import Generator`` is the one entry point that makes any checkpoint with a
text decoder write; it is imported on first use, so that ``omniformer --help`` stays fast.
"""


def __getattr__(name: str):
    if name in ("Generator", "GeneratorError"):
        from .tasks.seq2seq import generator
        return getattr(generator, name)
    raise AttributeError(f"module 'omniformer' has no attribute {name!r}")


__all__ = ["Generator", "GeneratorError"]
