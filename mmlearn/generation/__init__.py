"""Chapter 10 — cross-modal generation: image tokens (VQ-VAE), one Transformer over [text; image
tokens], conditional flow matching with classifier-free guidance, and the instruments that measure
what a generator made (a judge trained on real scenes, CLIPScore with the book's CLIP).
"""

from mmlearn.generation.diffusion import *  # noqa: F403
from mmlearn.generation.evaluate import *  # noqa: F403
from mmlearn.generation.tokens import *  # noqa: F403
from mmlearn.generation.vq import *  # noqa: F403
