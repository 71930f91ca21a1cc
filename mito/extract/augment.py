"""Augmented views of a tile (``mito extract --augment hed:4,flip``).

Each view is stored as its own variant array with the same rows as the tile table (key ``<variant>:<view>``,
e.g. ``efficientnet_lite0:z1:rgb:hed0``), so heads can sample a tile's views in feature space.

- ``hed:K[:S]``: K stain jitters in HED space (Tellez et al. 2018, "Whole-slide mitosis detection in H&E breast
  histology using PHH3 as a reference to train distilled stain-invariant convolutional networks"): colour
  deconvolution (Ruifrok & Johnston 2001, scikit-image ``rgb2hed``), each stain channel c scaled by
  alpha_c ~ U(1-S, 1+S) and shifted by beta_c ~ U(-S, S) optical density units, back to RGB. S defaults to 0.05 ("HED-light").
- ``flip`` (left-right), ``vflip`` (top-bottom), ``rot90`` (a quarter turn anticlockwise): exact, no randomness.

The jitter of tile t in view v is drawn from ``numpy.random.default_rng([seed, sha256(tile_id) words..., v])``:
the same whatever the batch size, worker count, chunk order or resume.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from mito.extract.colors import skimage_color
from mito.extract.errors import ExtractError

GEOMETRIC = ("flip", "vflip", "rot90")
DEFAULT_HED_STRENGTH = 0.05
MAX_HED_VIEWS = 32
OD_SCALE = float(-np.log(1e-6))  # skimage's stain units per optical density unit, inverted


@dataclass(frozen=True)
class View:
    """One augmented view: its name (the key suffix), kind (hed, flip, vflip, rot90), index and jitter strength."""

    name: str
    kind: str
    index: int = 0
    strength: float = 0.0

    def as_dict(self, seed: int) -> dict[str, object]:
        """Provenance recorded with the view's variant."""
        d: dict[str, object] = {"name": self.name, "kind": self.kind}
        if self.kind == "hed":
            d.update(
                index=self.index,
                alpha=[1 - self.strength, 1 + self.strength],
                beta=[-self.strength, self.strength],
                seed=seed,
                method="Tellez 2018 HED jitter (skimage rgb2hed/hed2rgb), per tile rng([seed, sha256(tile_id), index])",
            )
        return d


def parse_augment(spec: str | None) -> list[View]:
    """``hed:4,flip`` -> views hed0..hed3, flip; one-line ExtractError on a bad spec."""
    if not spec:
        return []
    views: list[View] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, *args = part.split(":")
        if name in GEOMETRIC and not args:
            views.append(View(name, name))
        elif name == "hed" and 1 <= len(args) <= 2:
            try:
                k = int(args[0])
                s = float(args[1]) if len(args) == 2 else DEFAULT_HED_STRENGTH
            except ValueError:
                k, s = -1, -1.0
            if not 1 <= k <= MAX_HED_VIEWS or not 0 < s < 1:
                raise ExtractError(
                    f"--augment {part}: expected hed:K[:S] with K in 1..{MAX_HED_VIEWS} and S in (0, 1), e.g. hed:4 or hed:4:0.05"
                )
            views += [View(f"hed{i}", "hed", i, s) for i in range(k)]
        else:
            raise ExtractError(f"--augment: unknown view {part!r}; use hed:K[:S], {', '.join(GEOMETRIC)} (e.g. hed:4,flip)")
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise ExtractError(f"--augment {spec}: a view is given twice")
    return views


def tile_rng(seed: int, tile_id: str, index: int) -> np.random.Generator:
    """The generator of one tile's view: depends only on (seed, tile id, view index)."""
    words = np.frombuffer(hashlib.sha256(str(tile_id).encode()).digest(), dtype=np.uint32).tolist()
    return np.random.default_rng([int(seed), *words, int(index)])


def hed_jitter(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """uint8 HxWx3 -> uint8 HxWx3 with each HED stain channel scaled by U(1-s, 1+s) and shifted by U(-s, s)."""
    color = skimage_color()
    alpha = rng.uniform(1 - strength, 1 + strength, 3)
    beta = rng.uniform(-strength, strength, 3)
    hed = color.rgb2hed(img)
    # scikit-image >= 0.19 divides optical densities by -log(1e-6); Tellez's beta is in optical density units
    rgb = color.hed2rgb(hed * alpha + beta / OD_SCALE)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def apply_view(img: np.ndarray, view: View, seed: int, tile_id: str) -> np.ndarray:
    """The augmented image of one tile (uint8 HxWx3) for ``view``."""
    if view.kind == "flip":
        return np.ascontiguousarray(img[:, ::-1])
    if view.kind == "vflip":
        return np.ascontiguousarray(img[::-1])
    if view.kind == "rot90":
        return np.ascontiguousarray(np.rot90(img))
    return hed_jitter(img, tile_rng(seed, tile_id, view.index), view.strength)
