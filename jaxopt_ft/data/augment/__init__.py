"""On-device data augmentation: pure ``(key, batch) -> batch`` functions.

Every op here is a factory that takes keyword-only hyperparameters and returns a function
``augment(key, batch) -> batch`` over a batch dict ``{"x": (B, ...), "label": (B,) or (B, C),
...}``. The functions are pure jnp (no Python branching on values), so they run inside the
jitted train step (``train.make_train_step(augment=...)``) and under ``jax.vmap``; the same key
gives the same output. Each op acts on each example independently with probability ``p``.

Images ``x: (B, H, W, C)``:
  ``crop(pad)``: random crop of the zero-padded image = a random translation by up to ``pad``
  pixels; ``flip``: horizontal flip; ``rotate(degrees)``: rotation by up to ``degrees`` (bilinear,
  zero fill); ``brightness_contrast(brightness, contrast)``; ``cutout(size)``: a zeroed
  ``size x size`` square; ``cutmix(alpha)``: a box pasted from another example.
Signals ``x: (B, L)`` or ``(B, L, C)`` (MNIST-1D):
  ``shift(max_shift)``: circular shift; ``stretch(max_stretch)``: time-axis resampling about the
  centre; ``scale(max_scale)``: amplitude scaling; ``noise(std)``: additive Gaussian noise.
Any input: ``mixup(alpha)``: a convex combination with another example.

``mixup`` and ``cutmix`` turn labels into soft ``(B, num_classes)`` targets, which
``train.cross_entropy`` accepts. Zero is the fill value because loaded datasets are
standardised (0 is the training mean).

Configs name ops in a string spec, ``"crop(pad=1), rotate(degrees=10, p=0.5)"``, or a list of
``{"name": ..., **kwargs}`` dicts; :func:`build` validates it against the data's shape.

Example:
    >>> aug = build("crop(pad=1), rotate(degrees=10)", input_shape=(8, 8, 1), num_classes=10)
    >>> step = train.make_train_step(augment=aug)
"""

from jaxopt_ft.data.augment._core import Augment as Augment
from jaxopt_ft.data.augment._core import Batch as Batch
from jaxopt_ft.data.augment._core import compose as compose
from jaxopt_ft.data.augment.images import brightness_contrast as brightness_contrast
from jaxopt_ft.data.augment.images import crop as crop
from jaxopt_ft.data.augment.images import cutout as cutout
from jaxopt_ft.data.augment.images import flip as flip
from jaxopt_ft.data.augment.images import rotate as rotate
from jaxopt_ft.data.augment.mixing import cutmix as cutmix
from jaxopt_ft.data.augment.mixing import mixup as mixup
from jaxopt_ft.data.augment.signals import noise as noise
from jaxopt_ft.data.augment.signals import scale as scale
from jaxopt_ft.data.augment.signals import shift as shift
from jaxopt_ft.data.augment.signals import stretch as stretch
from jaxopt_ft.data.augment.spec import ANY_OPS as ANY_OPS
from jaxopt_ft.data.augment.spec import IMAGE_OPS as IMAGE_OPS
from jaxopt_ft.data.augment.spec import OPS as OPS
from jaxopt_ft.data.augment.spec import SIGNAL_OPS as SIGNAL_OPS
from jaxopt_ft.data.augment.spec import build as build
from jaxopt_ft.data.augment.spec import parse as parse

__all__ = [
    "ANY_OPS",
    "IMAGE_OPS",
    "OPS",
    "SIGNAL_OPS",
    "Augment",
    "Batch",
    "brightness_contrast",
    "build",
    "compose",
    "crop",
    "cutmix",
    "cutout",
    "flip",
    "mixup",
    "noise",
    "parse",
    "rotate",
    "scale",
    "shift",
    "stretch",
]
