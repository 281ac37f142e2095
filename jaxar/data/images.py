"""Image preprocessing for the grain pipelines: resize the short side, crop, flip.

The ImageNet 256 preprocessing of the token-image papers, as one configured step:

  resize   the short side to ``round(ratio * S)`` (aspect kept; PIL, antialiased), so an
           H x W image becomes ``round(H r)`` x ``round(W r)`` with ``r = round(ratio S) /
           min(H, W)``;
  crop     S x S: the centre one, top-left ``((H' - S) // 2, (W' - S) // 2)`` (evaluation,
           code extraction), or a uniformly random one (training, ``random_crop``);
  flip     left-right with probability 1/2 (training, ``flip``).

LlamaGen ("Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation",
arXiv:2406.06525) resizes the short side to S and centre-crops (ADM's ``center_crop_arr``,
bicubic); VAR ("Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale
Prediction", arXiv:2404.02905) resizes to 1.125 S (Lanczos), then crops S: random for
training, central for evaluation. Images are uint8 (H, W, C) in and out.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "RESAMPLE",
    "ImagePrep",
    "PreparedImages",
    "center_crop",
    "random_crop",
    "resize_short_side",
]

RESAMPLE = ("bicubic", "lanczos", "bilinear", "box")


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(
            f"image of dtype {image.dtype} and shape {image.shape}; accepted: uint8 (H, W, C)"
        )
    return image


def resize_short_side(image_HxWxC, short: int, resample: str = "bicubic") -> np.ndarray:
    """The image resized (PIL, antialiased) so that its short side is ``short`` pixels and
    its aspect ratio is kept: the long side becomes ``round(long * short / min(H, W))``.
    Every channel is filtered alike (no alpha premultiplication). An image whose short side
    already is ``short`` comes back unchanged."""
    from PIL import Image

    image = _check_image(image_HxWxC)
    if resample not in RESAMPLE:
        raise ValueError(f"resample={resample!r} is not supported; accepted: {RESAMPLE}")
    if short < 1:
        raise ValueError(f"short={short} is invalid; accepted: an integer >= 1")
    h, w, c = image.shape
    if min(h, w) == short:
        return image
    scale = short / min(h, w)
    size_hw = (
        (short, max(short, round(w * scale))) if h <= w else (max(short, round(h * scale)), short)
    )
    method = getattr(Image.Resampling, resample.upper())

    def resize(planes):  # (H, W) or RGB (H, W, 3): every band filtered alike
        pil = Image.fromarray(np.ascontiguousarray(planes))
        return np.asarray(pil.resize((size_hw[1], size_hw[0]), resample=method), np.uint8)

    if c == 3:
        return resize(image)
    # one channel at a time otherwise: PIL's RGBA / LA resizes premultiply by the alpha
    return np.stack([resize(image[..., i]) for i in range(c)], -1)


def _check_crop(image, size: int) -> np.ndarray:
    image = _check_image(image)
    h, w, _ = image.shape
    if not 1 <= size <= min(h, w):
        raise ValueError(f"crop size={size} does not fit an image of {h}x{w}")
    return image


def center_crop(image_HxWxC, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` crop: rows ``[(H - size) // 2, ...)``, columns alike."""
    image = _check_crop(image_HxWxC, size)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]


def random_crop(image_HxWxC, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` x ``size`` crop at a uniformly random top-left corner."""
    image = _check_crop(image_HxWxC, size)
    top = int(rng.integers(0, image.shape[0] - size + 1))
    left = int(rng.integers(0, image.shape[1] - size + 1))
    return image[top : top + size, left : left + size]


@dataclasses.dataclass(frozen=True)
class ImagePrep:
    """Resize-and-crop to ``size`` x ``size``.

    Attributes:
      size: S, the output side.
      ratio: the short side is resized to ``round(ratio * S)`` before the crop (>= 1;
        VAR: 1.125).
      random_crop: a random S x S crop instead of the central one (training only).
      flip: a random left-right flip with probability 1/2 (training only).
      resample: PIL's filter, one of ``RESAMPLE``.
    """

    size: int
    ratio: float = 1.0
    random_crop: bool = False
    flip: bool = False
    resample: str = "bicubic"

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"image size={self.size!r} is invalid; accepted: an integer >= 1")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float):
            raise ValueError(f"image ratio={self.ratio!r} is invalid; accepted: a number >= 1")
        if not 1.0 <= self.ratio <= 4.0:
            raise ValueError(f"image ratio={self.ratio!r} is invalid; accepted: 1 <= ratio <= 4")
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample={self.resample!r} is not supported; accepted: {RESAMPLE}")

    @property
    def is_random(self) -> bool:
        return self.random_crop or self.flip

    def deterministic(self) -> ImagePrep:
        """The evaluation form: the same resize, the central crop, no flip."""
        return dataclasses.replace(self, random_crop=False, flip=False)

    def shape(self, channels: int) -> tuple[int, int, int]:
        return (self.size, self.size, channels)

    def __call__(self, image_HxWxC, rng: np.random.Generator | None = None) -> np.ndarray:
        """The prepared uint8 (S, S, C) image; ``rng`` is required when ``is_random``."""
        if self.is_random and rng is None:
            raise ValueError("a random crop or flip needs rng=np.random.Generator")
        image = resize_short_side(image_HxWxC, round(self.ratio * self.size), self.resample)
        if self.random_crop:
            image = random_crop(image, self.size, rng)
        else:
            image = center_crop(image, self.size)
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)


class PreparedImages:
    """An image source whose records' ``"image"`` goes through ``prep``.

    ``source[i]`` is the deterministic form (central crop, no flip), for evaluation and
    for encoding a split once; ``source.augmented(i, rng)`` applies ``prep`` itself (random
    crop / flip when configured). :func:`jaxar.data.pipeline.batched` calls ``augmented``
    with a generator seeded by (seed, global batch, row), so a resumed iterator replays
    the same crops.
    """

    def __init__(self, source, prep: ImagePrep, *, name: str):
        self.source, self.prep, self.name = source, prep, name
        self._eval = prep.deterministic()

    def __len__(self) -> int:
        return len(self.source)

    def _with(self, rec: dict, image) -> dict:
        return {**rec, "image": image}

    def __getitem__(self, i: int) -> dict:
        rec = self.source[int(i)]
        return self._with(rec, self._eval(rec["image"]))

    @property
    def is_random(self) -> bool:
        return self.prep.is_random

    def augmented(self, i: int, rng: np.random.Generator) -> dict:
        rec = self.source[int(i)]
        return self._with(rec, self.prep(rec["image"], rng))

    def __repr__(self) -> str:
        return f"PreparedImages(name={self.name!r}, prep={self.prep!r}, rows={len(self)})"
