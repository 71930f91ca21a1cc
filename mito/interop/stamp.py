"""STAMP (KatherLab/STAMP v2.5.0): per-slide HDF5 tile features with coordinates in micrometres, written and read as
STAMP does.

Writer matched: ``src/stamp/preprocessing/__init__.py::extract_`` (``feats`` float16, ``coords`` float32 um, root
attrs stamp_version, extractor, unit, tile_size_um, tile_size_px, code_hash, feat_type). Readers matched:
``src/stamp/modeling/data.py::get_coords`` (``tile_size_um`` or ``tile_size`` + ``unit == "um"``; refuses a
``stamp_version`` newer than itself), ``BagDataset.__getitem__`` (``feats[()]``), ``detect_feature_type``
(``feat_type``) and ``encoding/encoder/__init__.py::Encoder._read_h5`` (``extractor`` required).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from mito.interop.base import (
    InteropError,
    SlideExport,
    SourceSlide,
    StoreExport,
    attr_text,
    coords_of,
    export_folder,
    feature_shape,
    h5_rows,
    open_h5,
    plain,
    write_slide_csv,
)

FORMAT = "stamp"
STAMP_VERSION = "2.5.0"  # the STAMP release whose layout this follows; get_coords refuses files newer than the reader
SLIDE_TABLE = "slide_table.csv"  # PATIENT, FILENAME (relative to the feature folder, ending in .h5)
EXTRACTORS = (
    "ctranspath",
    "chief-ctranspath",
    "conch",
    "conch1_5",
    "uni",
    "uni2",
    "dino-bloom",
    "gigapath",
    "h-optimus-0",
    "h-optimus-1",
    "virchow",
    "virchow-full",
    "virchow2",
    "musk",
    "mstar",
    "plip",
    "keep",
    "ticon",
    "empty",
    "red-dino",
)
_ALIASES = {
    "uni_v1": "uni",
    "uni_v2": "uni2",
    "conch_v1": "conch",
    "conch_v15": "conch1_5",
    "hoptimus0": "h-optimus-0",
    "hoptimus1": "h-optimus-1",
    "h_optimus_0": "h-optimus-0",
    "h_optimus_1": "h-optimus-1",
    "prov_gigapath": "gigapath",
}


def stamp_extractor(backbone: str) -> str:
    """STAMP's ExtractorName for a backbone when it is one (its slide encoders check it), else the backbone's name."""
    b = backbone.lower()
    return b if b in EXTRACTORS else _ALIASES.get(b, backbone)


def _write(tmp: Path, out: Path, head: StoreExport, sl: SlideExport) -> list[str]:
    import h5py

    mpp = float(sl.geometry["level0_mpp"])
    if not math.isfinite(mpp):
        raise InteropError(f"{sl.slide} records no um/px: STAMP's coordinates are in micrometres; export it as trident or clam")
    with h5py.File(tmp / f"{sl.stem}.h5", "w") as f:
        f["coords"] = (sl.coords.astype(np.float64) * mpp).astype(np.float32)
        f["feats"] = sl.features.astype(np.float16)  # the store's own float16 values, exactly
        f.attrs.update(
            stamp_version=STAMP_VERSION,
            extractor=stamp_extractor(head.key.split(":")[0]),
            unit="um",
            tile_size_um=float(sl.field0 * mpp),
            tile_size_px=int(sl.geometry["patch_size"]),
            code_hash=head.tile_hash,
            feat_type="tile",
            mito_variant=head.key,
            mito_slide=sl.slide,
        )
    return []


def _finish(tmp: Path, out: Path, head: StoreExport) -> None:
    write_slide_csv(tmp / SLIDE_TABLE, ["PATIENT", "FILENAME"], ([sl.patient or sl.stem, f"{sl.stem}.h5"] for sl in head.slides))


def export_stamp(
    store_path: str, out_dir: str | os.PathLike, feature: str | None = None, overwrite: bool = False
) -> tuple[list[Path], list[str]]:
    """One ``<slide stem>.h5`` per slide as STAMP's ``extract_`` writes it (feats float16, coords float32 um of the
    level-0 top-left, root attrs) and ``slide_table.csv`` (PATIENT, FILENAME), plus mito.json. Slides without a
    level-0 um/px are refused (STAMP's coordinates are micrometres)."""
    return export_folder(store_path, out_dir, FORMAT, feature, overwrite, _write, _finish)


# ---------------------------------------------------------------- import


def is_stamp_file(f: object) -> bool:
    """A STAMP features file: ``feats`` (or the older ``patch_embeddings``)."""
    return "feats" in f or "patch_embeddings" in f  # type: ignore[operator]


def scan_stamp(folder: Path) -> list[SourceSlide]:
    """Every ``*.h5`` under ``folder`` (sub-folders kept in the slide name, as STAMP's FILENAME) read as STAMP's
    readers do: ``feats`` (else ``patch_embeddings``), ``coords`` in um with ``tile_size_um`` (or ``tile_size`` and
    ``unit == "um"``), the ``extractor`` attr as the encoder; slide or patient embeddings (``feat_type``) are refused."""
    return [_scan_file(folder, p) for p in sorted(q for q in folder.rglob("*.h5") if q.is_file())]


def _scan_file(folder: Path, path: Path) -> SourceSlide:
    with open_h5(path) as f:
        name = "feats" if "feats" in f else "patch_embeddings" if "patch_embeddings" in f else None
        if name is None:
            raise InteropError(f"{path} has no 'feats' dataset: not a STAMP tile-features file")
        a = {k: plain(v) for k, v in f.attrs.items()}
        kind = attr_text(a.get("feat_type")) or "tile"
        if kind != "tile":
            raise InteropError(f"{path} holds STAMP {kind} embeddings (one row per {kind}), not tile features")
        n, d = feature_shape(path, f[name], name)
        coords = coords_of(path, f, n) if "coords" in f else None
    side = a.get("tile_size_um")
    if not side and a.get("tile_size") and a.get("unit") == "um":
        side = a.get("tile_size")
    if coords is not None and not side:
        raise InteropError(
            f"{path}: its coords have no unit STAMP records (tile_size_um, or tile_size with unit um); historic "
            "224-px STAMP files are not read"
        )
    keep = {k: a[k] for k in ("stamp_version", "extractor", "unit", "tile_size_um", "tile_size_px", "code_hash") if k in a}
    slide = attr_text(a.get("mito_slide")) or path.relative_to(folder).with_suffix("").as_posix()
    return SourceSlide(
        slide,
        [path],
        n,
        d,
        h5_rows(path, name),
        encoder=attr_text(a.get("extractor")),
        coords=coords,
        unit="um",
        side=float(side) if side else None,
        attrs=keep,
    )
