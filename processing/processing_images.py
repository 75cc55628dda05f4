"""Checks of raw images before an image processor sees them (shared by every processor that takes images).

transformers' image processors fail on an empty image with a `ZeroDivisionError` from their resize arithmetic and on
NaN pixels with a message that does not say which image of the batch holds them; these checks name the image.
"""

import numpy as np
import torch
from PIL import Image
from transformers.image_utils import is_valid_image


def check_image(image, name: str = "Image") -> None:
    """Raise a `ValueError` starting with `name` (e.g. "Image 3", "The image of problem 2") if `image` has no pixels
    or holds NaN/inf values; `TypeError` if it is not a PIL image, numpy array or torch tensor."""
    if not is_valid_image(image):
        raise TypeError(f"{name} is a {type(image).__name__}; pass a PIL image, numpy array or torch tensor.")
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"{name} is empty ({image.width}×{image.height} pixels); pass an image with pixels.")
        if image.mode not in ("F", "I"):  # only float and int32 modes can hold anything but 8-bit values
            return
        values = np.asarray(image)
    else:
        values = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if values.size == 0:
            raise ValueError(f"{name} is empty (shape {tuple(values.shape)}); pass an image with pixels.")
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        found = " and ".join(f"{count} {what}" for count, what in ((nan, "NaN"), (inf, "inf")) if count)
        raise ValueError(f"{name} holds {found} values (shape {tuple(values.shape)}); fix or drop the image.")


def validate_images(images) -> list:
    """A list of checked images (PIL, numpy or torch); a batched array counts as one image per leading entry.
    Errors name the image by its position in the batch."""
    if is_valid_image(images):
        is_batched_array = getattr(images, "ndim", 3) == 4
        images = list(images) if is_batched_array else [images]
    elif not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be an image or a list of images, got a {type(images).__name__}.")
    if len(images) == 0:
        raise ValueError("Got no images; pass at least one.")
    for index, image in enumerate(images):
        check_image(image, f"Image {index}")
    return list(images)


__all__ = ["check_image", "validate_images"]
