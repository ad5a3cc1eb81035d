"""What the scanner adds to the anatomy: a series UID, reconstruction noise and blur, int16 rounding."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."  # the LIDC-IDRI root shared by every LUNA16 series UID
HU_FLOOR = -1024  # scanners clip reconstructed air here


def series_uid(rng: np.random.Generator) -> str:
    """A 64-character DICOM-style UID; the suffix has no leading zero, as DICOM requires."""
    digits = [int(rng.integers(1, 10)), *rng.integers(0, 10, size=29).tolist()]
    return UID_PREFIX + "".join(str(d) for d in digits)


def simulate_acquisition(rng: np.random.Generator, hu: np.ndarray) -> np.ndarray:
    """Quantum noise filtered by an in-plane reconstruction kernel, then int16 like a real scanner.

    Only x/y are blurred: along z the slice profile, not the kernel, sets resolution. The white noise
    is scaled by the kernel's exact noise gain so the output noise σ is 10-25 HU.
    """
    noise_sd = rng.uniform(10.0, 25.0)
    kernel_sigma = rng.uniform(0.5, 0.8)
    impulse = np.zeros(33)
    impulse[16] = 1.0
    noise_gain = float(np.sum(ndimage.gaussian_filter1d(impulse, kernel_sigma) ** 2))  # 2-D separable
    noisy = hu + rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_sd / noise_gain)
    image = ndimage.gaussian_filter(noisy, sigma=(0.0, kernel_sigma, kernel_sigma), mode="nearest")
    return np.clip(np.rint(image), HU_FLOOR, np.iinfo(np.int16).max).astype(np.int16)

