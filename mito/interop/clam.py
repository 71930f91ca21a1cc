"""CLAM (mahmoodlab/CLAM): ``h5_files/<slide_id>.h5`` + ``pt_files/<slide_id>.pt`` features and ``patches/<slide_id>.h5``
coordinates, written and read as CLAM does.

Writers matched: ``extract_features_fp.py::compute_w_loader`` (h5_files: ``features`` float32 + ``coords``, no attrs;
pt_files: ``torch.save(torch.from_numpy(features))``) and ``WholeSlideImage.process_contour`` (patches: ``coords``
attrs patch_size, patch_level, downsample, downsampled_level_dim, level_dim, name, save_path). Readers matched:
``dataset_generic.py::Generic_MIL_Dataset.__getitem__`` (``torch.load(pt_files/<id>.pt)``, or h5 ``features[:]``,
``coords[:]``) and ``dataset_h5.py::Whole_Slide_Bag_FP`` (``coords.attrs['patch_level']``, ``['patch_size']``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mito.interop.base import (
    InteropError,
    SlideExport,
    SourceSlide,
    StoreExport,
    coords_of,
    export_folder,
    feature_shape,
    h5_rows,
    held_rows,
    load_tensor_file,
    open_h5,
    plain,
    write_slide_csv,
)

FORMAT = "clam"
SLIDE_LIST = "slides.csv"  # CLAM's --csv_path list: case_id, slide_id


def _write(tmp: Path, out: Path, head: StoreExport, sl: SlideExport) -> list[str]:
    import h5py
    import torch

    for sub in ("h5_files", "pt_files", "patches"):
        (tmp / sub).mkdir(exist_ok=True)
    d = sl.features.shape[1]
    with h5py.File(tmp / "h5_files" / f"{sl.stem}.h5", "w") as f:  # compute_w_loader: save_hdf5(..., attr_dict=None)
        f.create_dataset("features", data=sl.features.astype(np.float32), maxshape=(None, d), chunks=(32, d) if len(sl.features) else None)
        f.create_dataset("coords", data=sl.coords.astype(np.int64), maxshape=(None, 2), chunks=(32, 2) if len(sl.coords) else None)
    torch.save(torch.from_numpy(np.ascontiguousarray(sl.features, dtype=np.float32)), tmp / "pt_files" / f"{sl.stem}.pt")
    dims = tuple(sl.size) if sl.size is not None else (0, 0)
    with h5py.File(tmp / "patches" / f"{sl.stem}.h5", "w") as f:  # process_contour's attrs, read at level 0
        cd = f.create_dataset("coords", data=sl.coords.astype(np.int64), maxshape=(None, 2))
        cd.attrs.update(
            patch_size=int(round(sl.field0)),
            patch_level=0,
            downsample=np.array([1.0, 1.0]),
            downsampled_level_dim=np.array(dims, np.int64),
            level_dim=np.array(dims, np.int64),
            name=sl.stem,
            save_path=str(out / "patches"),
        )
    return []


def _finish(tmp: Path, out: Path, head: StoreExport) -> None:
    write_slide_csv(tmp / SLIDE_LIST, ["case_id", "slide_id"], ([sl.patient or sl.stem, sl.stem] for sl in head.slides))


def export_clam(
    store_path: str, out_dir: str | os.PathLike, feature: str | None = None, overwrite: bool = False
) -> tuple[list[Path], list[str]]:
    """CLAM's layout: ``h5_files/<id>.h5`` (features float32, coords int64, no attrs), ``pt_files/<id>.pt`` (a bare
    float32 tensor), ``patches/<id>.h5`` (coords with patch_level 0 and the level-0 patch size, so CLAM's and TRIDENT's
    legacy readers re-read the field mito saw) and ``slides.csv`` (case_id, slide_id), plus mito.json."""
    return export_folder(store_path, out_dir, FORMAT, feature, overwrite, _write, _finish)


# ---------------------------------------------------------------- import


def clam_layout(folder: Path) -> bool:
    """A CLAM features folder (it holds h5_files/ or pt_files/)."""
    return (folder / "h5_files").is_dir() or (folder / "pt_files").is_dir()


def scan_clam(folder: Path) -> list[SourceSlide]:
    """``h5_files/*.h5`` (``features`` + ``coords``) when there, else ``pt_files/*.pt`` (a tensor; no coordinates);
    ``folder`` may also be one of those sub-folders. A ``patches/<id>.h5`` beside them gives the level-0 box
    (``patch_size`` x ``downsample``) and, at patch_level 0, the slide's size. CLAM records no encoder."""
    h5_dir = folder / "h5_files" if (folder / "h5_files").is_dir() else folder
    h5s = sorted(p for p in h5_dir.glob("*.h5") if p.is_file())
    if h5s:
        patches = next((p for p in (h5_dir.parent / "patches", folder / "patches") if p.is_dir()), None)
        return [_scan_h5(p, patches) for p in h5s]
    pt_dir = folder / "pt_files" if (folder / "pt_files").is_dir() else folder
    out = []
    for p in sorted(q for q in pt_dir.glob("*.pt") if q.is_file()):
        x = load_tensor_file(p)
        out.append(SourceSlide(p.stem, [p], x.shape[0], x.shape[1], _pt_rows(p)))
    return out


def _pt_rows(path: Path) -> Any:
    return held_rows(lambda: load_tensor_file(path))  # the whole tensor, loaded once for the chunks that read it


def _scan_h5(path: Path, patches: Path | None) -> SourceSlide:
    with open_h5(path) as f:
        if "features" not in f:
            raise InteropError(f"{path} has no 'features' dataset: not a CLAM features file")
        n, d = feature_shape(path, f["features"], "features")
        coords = coords_of(path, f, n)
    side, size, attrs = None, None, {}
    pf = patches / path.name if patches is not None else None
    if pf is not None and pf.is_file():
        with open_h5(pf) as f:
            a = {k: plain(v) for k, v in f["coords"].attrs.items()} if "coords" in f else {}
        ps, ds, level = a.get("patch_size"), a.get("downsample"), a.get("patch_level")
        if isinstance(ps, (int, float)) and isinstance(ds, list) and len(ds) == 2 and all(isinstance(v, (int, float)) for v in ds):
            side = float(ps) * float(ds[0])
        if level == 0 and isinstance(a.get("level_dim"), list) and len(a["level_dim"]) == 2 and min(a["level_dim"]) > 0:
            size = (int(a["level_dim"][0]), int(a["level_dim"][1]))
        attrs = {k: a[k] for k in ("patch_size", "patch_level", "downsample") if k in a}
    return SourceSlide(path.stem, [path], n, d, h5_rows(path, "features"), coords=coords, side=side, size=size, attrs=attrs)
