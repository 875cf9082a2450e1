"""Image-quality engine.

Submodules are imported explicitly (importing the package loads nothing heavy):

* :mod:`quality.imaging.metrics` - batched torch image-quality metrics on CPU or CUDA
  (sharpness, noise, SNR/CNR/CJV/EFC/FBER, entropy, exposure, blank and border flags);
* :mod:`quality.imaging.duplicates` - exact and near-duplicate images.
"""

__all__: list[str] = []
