"""ShapesWorld: Omniformer's built-in multimodal dataset of coloured shapes.

Images of 2-6 coloured squares, circles and triangles; true captions; Sort-of-CLEVR style
questions with a closed, balanced answer vocabulary; and every caption and question spoken
in several voices (one held out for testing). ``generate_shapes`` writes it all with a
manifest.
"""
from .generate import generate_shapes
from .language import ANSWERS, FAMILIES
from .scene import COLOURS, SHAPES

__all__ = ["generate_shapes", "ANSWERS", "FAMILIES", "COLOURS", "SHAPES"]
