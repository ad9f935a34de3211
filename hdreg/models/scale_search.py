"""Rotation, zoom *and* position of a pair in one search over a scale space of learned features.

:class:`hdreg.models.similarity.SimilarityNet` scores rotation × zoom classes about the photos'
centres on ``P×P`` thumbnails of both photos. Where B is zoomed out far (×0.25: A's content
fills a quarter of B's width), B's thumbnail shows A's content in a few encoder cells, and it
need not be at B's centre; where B is zoomed in far, the same holds for B's content in A.
:class:`ScaleSpaceSearch` looks for the smaller view's content in the larger one at the
resolution where both show it at the same scale, as a scale space does:

- a *template*: the photo that shows the shared content larger, at ``template`` pixels (a
  square thumbnail), turned by each of ``rotations`` angles (``A`` turned into B's orientation
  where B is zoomed out, ``B`` turned into A's where B is zoomed in); cells of the turned
  thumbnail that fall outside the photo take no part;
- a *search image* per zoom ``z = 2^j`` (``j = −n … n``): the other photo at ``template · 2^|j|``
  pixels, where its content is shown at the template's scale;
- both through the same encoder (that of a trained homography network, whose features were
  trained for correlation), L2-normalised per cell; for every class and every shift of the
  template over the search image (shifts by whole cells, overhanging by up to ``overhang`` of
  the template), the mean cosine of the template's cells with the cells under them
  (``conv2d``: one correlation per class);
- each class's score is its best shift's mean cosine, and that shift with the class's rotation
  and zoom is a similarity ``H_a_from_b``.

Cost: each photo encoded at three (``2n + 1``) resolutions and ``rotations`` turned templates of
``template`` pixels — computed once per image, not per class — and one correlation per class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdreg.geometry import inside_mask, sample_at, warp_grid
from hdreg.geometry_np import scale_matrix
from hdreg.models.homographynet import standardize
from hdreg.models.similarity import centre_similarity

__all__ = ["ScaleSpaceSearch"]


def _scale(size_from: int, size_to: int) -> Tensor:
    """:func:`~hdreg.geometry_np.scale_matrix` of a ``size_from`` square resized to ``size_to``."""
    return torch.from_numpy(scale_matrix((size_from, size_from), (size_to, size_to)))


def _shift(dx: float, dy: float) -> Tensor:
    return torch.tensor([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]], dtype=torch.float64)


class ScaleSpaceSearch(nn.Module):
    """Scores every ``(rotation, zoom)`` class of a pair and gives its best similarity (see the
    module docstring).

    Args:
        encoder: a feature encoder (``stride`` attribute; ``(N, 1, h, w)`` → ``(N, D, h/s, w/s)``).
        template: side of the template thumbnail, pixels (a multiple of the encoder's stride).
        rotations: rotation classes over 360°.
        zoom_octaves: zoom classes from ``2^-n`` to ``2^n`` (``2``: one pixel of B spans two of
            A, B is zoomed out ×0.5, as in :class:`hdreg.models.similarity.SimilarityNet`).
        steps: zoom classes per octave (search sides rounded to the encoder's stride).
        overhang: how far the template may overhang the search image, share of its side.
        normalize: standardise each image to zero mean, unit variance before the encoder.

    ``forward(a, b, valid_a=None, valid_b=None)`` takes both photos as ``(1, 1, N, N)`` square
    thumbnails of side ``N = template · 2^n`` (values in ``[0, 1]``), with masks of the pixels
    that show the photo (a photo that is not square is best shown at its own aspect ratio on
    the square, not stretched to it: a turn of a stretched photo is no turn of the photo; the
    rest of the square takes no part), and returns ``scores (K,)`` and ``H_a_from_b (K, 3, 3)``
    float64 (both on the CPU) in those thumbnails' pixels, classes in the order of
    :meth:`hypotheses` (rotation-major).
    """

    #: :meth:`forward` gives each class's homography (position included), not scores alone
    gives_homographies = True

    def __init__(
        self,
        encoder: nn.Module,
        template: int = 64,
        rotations: int = 16,
        zoom_octaves: int = 2,
        steps: int = 2,
        overhang: float = 0.5,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.stride = int(encoder.stride)
        if rotations < 1 or zoom_octaves < 0:
            raise ValueError(
                f"need rotations >= 1 and zoom_octaves >= 0, got {rotations} and {zoom_octaves}"
            )
        if template % self.stride:
            raise ValueError(
                f"template {template} must be a multiple of the encoder's stride {self.stride}"
            )
        if not 0 <= overhang < 1:
            raise ValueError(f"overhang must be in [0, 1), got {overhang}")
        self.template, self.rotations = int(template), int(rotations)
        self.zoom_octaves, self.overhang, self.normalize = int(zoom_octaves), overhang, normalize
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)

    @property
    def input_size(self) -> int:
        """Side of the square thumbnails :meth:`forward` takes."""
        return self.template * 2**self.zoom_octaves

    @property
    def angles(self) -> list[float]:
        return [k * 360.0 / self.rotations for k in range(self.rotations)]

    def _side(self, j: int) -> int:
        """Side of the search image of zoom step ``j``: ``template · 2^(|j| / steps)``, rounded
        to the encoder's stride."""
        return round(self.template * 2 ** (abs(j) / self.steps) / self.stride) * self.stride

    @property
    def zooms(self) -> list[float]:
        """The zoom of each step (as realised by the rounded search sides)."""
        n = self.zoom_octaves * self.steps
        return [(self._side(j) / self.template) ** (1 if j >= 0 else -1) for j in range(-n, n + 1)]

    def hypotheses(self) -> list[tuple[float, float]]:
        """``(angle_deg, zoom)`` of every class, in the order of the scores."""
        return [(r, z) for r in self.angles for z in self.zooms]

    def _features(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """L2-normalised encoder features; cells mostly outside the photo (``valid``, a pixel
        mask of ``x``'s size) are zero, as the overhang's are."""
        if self.normalize:
            x = standardize(x)
        feats = F.normalize(self.encoder(x), dim=1)
        if valid is not None:
            feats = feats * (F.adaptive_avg_pool2d(valid, feats.shape[-2:]) >= 0.5).to(feats.dtype)
        return feats

    def _turned(self, image: Tensor, valid: Tensor, angles: list[float]) -> tuple[Tensor, Tensor]:
        """The ``template``-pixel thumbnail ``image (1, 1, t, t)`` turned by each angle about its
        centre (``T_k(q) = image(R_k q)``, flat outside the photo), through the encoder, and each
        cell's weight (1 where the turned cell lies inside the photo: inside the thumbnail and
        on its ``valid`` pixels)."""
        t, side = self.template, self.template // self.stride
        R = centre_similarity(t, torch.tensor(angles), torch.ones(len(angles)))
        grid = warp_grid(R.to(device=image.device, dtype=image.dtype), (t, t))
        mean = image.mean()
        turned = sample_at((image - mean).expand(len(angles), -1, -1, -1), grid) + mean
        inside = inside_mask(grid, (t, t)).to(image.dtype)
        inside = inside * sample_at(valid.expand(len(angles), -1, -1, -1), grid)
        weight = F.adaptive_avg_pool2d(inside, side) >= 0.5
        return self._features(turned), weight.to(image.dtype)

    def _correlate(
        self, search: Tensor, templates: Tensor, weight: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Best mean cosine ``(R,)`` of each weighted template over ``search (1, D, h, w)`` and
        its shift ``(R, 2)`` (x, y, in cells: template cell ``(i, j)`` on search cell
        ``(i + y, j + x)``)."""
        side = templates.shape[-1]
        pad = round(self.overhang * side)
        kernels = templates * weight
        out = F.conv2d(F.pad(search, (pad, pad, pad, pad)), kernels)[0]  # (R, h', w')
        out = out / weight.flatten(1).sum(dim=1).clamp_min(1.0)[:, None, None]
        best, index = out.flatten(1).max(dim=1)
        index = index.cpu()
        w_out = out.shape[-1]
        shift = torch.stack([index % w_out - pad, index // w_out - pad], dim=1)
        return best, shift.double()

    @torch.inference_mode()
    def forward(
        self, a: Tensor, b: Tensor, valid_a: Tensor | None = None, valid_b: Tensor | None = None
    ) -> dict[str, Tensor]:
        n, t, s = self.input_size, self.template, self.stride
        if a.shape[-2:] != (n, n) or b.shape[-2:] != (n, n):
            raise ValueError(
                f"a and b must be {n}x{n} thumbnails, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        valid_a = torch.ones_like(a) if valid_a is None else valid_a.to(a)
        valid_b = torch.ones_like(b) if valid_b is None else valid_b.to(b)
        if valid_a.shape != a.shape or valid_b.shape != b.shape:
            raise ValueError(
                f"valid_a and valid_b must have the thumbnails' shapes {tuple(a.shape)} and "
                f"{tuple(b.shape)}, got {tuple(valid_a.shape)} and {tuple(valid_b.shape)}"
            )
        levels = {self._side(j) for j in range(self.zoom_octaves * self.steps + 1)}

        def pyramid(x: Tensor) -> dict[int, Tensor]:
            return {side: F.interpolate(x, size=(side, side), mode="area") for side in levels}

        pyr_a, pyr_b, in_a, in_b = pyramid(a), pyramid(b), pyramid(valid_a), pyramid(valid_b)
        feats_a = {side: self._features(x, in_a[side]) for side, x in pyr_a.items()}
        feats_b = {side: self._features(x, in_b[side]) for side, x in pyr_b.items()}
        angles = self.angles
        templ_a, weight_a = self._turned(pyr_a[t], in_a[t], angles)
        templ_b, weight_b = self._turned(pyr_b[t], in_b[t], [-r for r in angles])
        R = centre_similarity(t, torch.tensor(angles), torch.ones(len(angles)))  # b-turn to a
        scores = torch.empty(len(angles), len(self.zooms), dtype=torch.float64)
        H = torch.empty(len(angles), len(self.zooms), 3, 3, dtype=torch.float64)
        for zi in range(len(self.zooms)):
            j = zi - self.zoom_octaves * self.steps
            side = self._side(j)
            if j >= 0:  # B zoomed out (or not): A's turned template in B at `side`
                best, shift = self._correlate(feats_b[side], templ_a, weight_a)
                for k in range(len(angles)):
                    # A_t(R q) = B_side(q + s·shift): H_a_t_from_b_side = R · T(−s·shift)
                    h = R[k] @ _shift(*(-s * shift[k]).tolist())
                    H[k, zi] = _scale(t, n) @ h @ _scale(n, side)
            else:  # B zoomed in: B's template turned into A's orientation, in A at `side`
                best, shift = self._correlate(feats_a[side], templ_b, weight_b)
                for k in range(len(angles)):
                    # B_t(R⁻¹ q) = A_side(q + s·shift): H_a_side_from_b_t = T(s·shift) · R
                    h = _shift(*(s * shift[k]).tolist()) @ R[k]
                    H[k, zi] = _scale(side, n) @ h @ _scale(n, t)
            scores[:, zi] = best.double().cpu()
        return {"scores": scores.flatten(), "H_a_from_b": H.flatten(0, 1)}
