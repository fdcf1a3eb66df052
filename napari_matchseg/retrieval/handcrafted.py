"""HOG + LBP + intensity and colour histograms: a retriever that needs no download at all.

The MatchSeg paper compared CLIP with LBP and HOG for choosing the support set; this combines
them. Each block is made invariant to what should not change the match: HOG is averaged over
the four flips (so a mirrored scan matches its original); LBP and the intensity histogram use a
percentile-stretched, smoothed image (so brightness, contrast and speckle noise barely move them);
the colour histogram is of opponent colours (r - g, (r + g)/2 - b) of a 32 x 32 average, blind to
additive brightness and averaging noise away. Histograms are square-rooted (Hellinger kernel),
each block is L2-normalised, weighted and concatenated.
"""

from __future__ import annotations

import numpy as np
from skimage.feature import hog, local_binary_pattern
from skimage.filters import gaussian
from skimage.transform import resize

from ..image_io import check_image, reduce_for_model, to_float_rgb
from .base import Retriever

_WEIGHTS = {"hog": 0.5, "lbp": 0.2, "intensity": 0.15, "colour": 0.15}


def _stretch(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [1, 99])
    if hi - lo < 1e-6:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0, 1)


def _hellinger(hist: np.ndarray) -> np.ndarray:
    hist = hist.astype(np.float32)
    s = hist.sum()
    return np.sqrt(hist / s) if s > 0 else hist


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


class HandcraftedRetriever(Retriever):
    """Offline default retriever: 448-dimensional vectors, about 20 ms per image on one CPU core."""

    name = "handcrafted"
    VERSION = 1
    size = 128
    batch_size = 32

    @property
    def model_id(self) -> str:
        return f"handcrafted-v{self.VERSION}-{self.size}"

    def features(self, image: np.ndarray) -> np.ndarray:
        rgb = to_float_rgb(reduce_for_model(check_image(image)))
        rgb = resize(rgb, (self.size, self.size, 3), order=1, anti_aliasing=True, preserve_range=True)
        rgb = gaussian(rgb, sigma=1.0, channel_axis=-1, preserve_range=True)
        gray = _stretch(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
        smooth = gaussian(gray, sigma=1.5, preserve_range=True)

        flips = (smooth, smooth[:, ::-1], smooth[::-1, :], smooth[::-1, ::-1])
        h = np.mean([hog(f, orientations=9, pixels_per_cell=(32, 32), cells_per_block=(2, 2),
                         block_norm="L2-Hys", feature_vector=True) for f in flips], axis=0)

        g8 = (smooth * 255).astype(np.uint8)
        lbp1 = local_binary_pattern(g8, P=8, R=1, method="uniform")
        lbp2 = local_binary_pattern(g8, P=16, R=2, method="uniform")
        lbp = np.concatenate([_hellinger(np.bincount(lbp1.astype(int).ravel(), minlength=10)[:10]),
                              _hellinger(np.bincount(lbp2.astype(int).ravel(), minlength=18)[:18])])

        intensity = _hellinger(np.histogram(smooth, bins=32, range=(0, 1))[0])

        coarse = rgb.reshape(32, self.size // 32, 32, self.size // 32, 3).mean(axis=(1, 3))  # averages noise out
        opp1 = coarse[..., 0] - coarse[..., 1]  # opponent colours: zero for grayscale, blind to
        opp2 = (coarse[..., 0] + coarse[..., 1]) / 2 - coarse[..., 2]  # additive brightness changes
        hist2d = np.histogram2d(opp1.ravel(), opp2.ravel(), bins=8, range=[[-0.6, 0.6], [-0.6, 0.6]])[0]
        colour = _hellinger(gaussian(hist2d, sigma=1.0, mode="constant", preserve_range=True).ravel())

        blocks = {"hog": h, "lbp": lbp, "intensity": intensity, "colour": colour}
        return np.concatenate([np.sqrt(_WEIGHTS[k]) * _unit(np.asarray(v, np.float32))
                               for k, v in blocks.items()]).astype(np.float32)

    def _embed_batch(self, images):
        return np.stack([self.features(im) for im in images])
