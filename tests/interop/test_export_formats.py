"""`mito export --format trident|clam|stamp`: each file re-read with plain h5py/torch exactly as that tool's reader reads
it (the tools do not install from PyPI). The reader lines each test follows are quoted in its docstring, from
mahmoodlab/TRIDENT a91fa84, mahmoodlab/CLAM 53e2409 and KatherLab/STAMP c54ce06 (v2.5.0); see docs/interop.md."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from packaging.version import Version
from typer.testing import CliRunner

from mito.cli import app
from mito.store import open_store
from tests.interop.conftest import KEY

runner = CliRunner()


def _export(store: Path, fmt: str, out: Path) -> str:
    res = runner.invoke(app, ["export", "--store", str(store), "--format", fmt, "--out", str(out), "--features", KEY])
    assert res.exit_code == 0, res.output
    return res.output


def _store_rows(store: Path) -> tuple[object, np.ndarray]:
    with open_store(store) as s:
        return s.tiles, s.read([KEY])


def test_trident_export_reads_as_tridents_readers(slide_store: Path, tmp_path: Path) -> None:
    """TRIDENT ``IO.read_coords`` + ``WSI.extract_patch_features`` / ``visualize_coords``::

        with h5py.File(coords_path, 'r') as f:
            attrs = dict(f['coords'].attrs)
            coords = f['coords'][:]
        patch_size = coords_attrs.get('patch_size', None)
        level0_magnification = coords_attrs.get('level0_magnification', None)
        target_magnification = coords_attrs.get('target_magnification', None)
        if None in (patch_size, level0_magnification, target_magnification):
            raise KeyError('Missing essential attributes in coords_attrs.')

    then ``WSIPatcher``: ``self.src_pixel_size = 10 / src_mag``, ``self.dst_pixel_size = 10 / dst_mag``,
    ``self.downsample = self.dst_pixel_size / self.src_pixel_size``, ``self.patch_size_src = round(patch_size * self.downsample)``.
    ``WSI.extract_slide_features``: ``coords = f['coords'][:]``, ``patch_features = f['features'][:]``,
    ``coords_attrs = dict(f['coords'].attrs)``, ``int(coords_attrs["patch_size_level0"])``.
    Writer attrs (``IO.coords_to_h5``): patch_size, ``patch_size_level0 = patch_size * src_mag // target_mag``,
    level0_magnification, target_magnification, overlap, name, savetodir, level0_width, level0_height; features:
    ``{'name': self.name, 'savetodir': save_features, 'encoder': model_name}``."""
    out = tmp_path / "trident"
    _export(slide_store, "trident", out)
    tiles, x = _store_rows(slide_store)
    for slide in ("atypical0.svs", "normal3.svs"):
        path = out / f"{Path(slide).stem}.h5"
        with h5py.File(path, "r") as f:  # IO.read_coords
            attrs = dict(f["coords"].attrs)
            coords = f["coords"][:]
        patch_size = attrs.get("patch_size", None)
        level0_magnification = attrs.get("level0_magnification", None)
        target_magnification = attrs.get("target_magnification", None)
        assert None not in (patch_size, level0_magnification, target_magnification)
        src_pixel_size, dst_pixel_size = 10 / level0_magnification, 10 / target_magnification  # WSIPatcher
        patch_size_src = round(patch_size * (dst_pixel_size / src_pixel_size))
        # 0.25 um/px is TRIDENT's 40x; 64 px at 0.5 um/px is 20x, and TRIDENT re-reads the same 128 level-0 px
        assert (level0_magnification, target_magnification, patch_size, patch_size_src) == (40, 20, 64, 128)
        assert attrs["patch_size_level0"] == patch_size * level0_magnification // target_magnification == 128
        assert (attrs["level0_width"], attrs["level0_height"]) == (384, 384) and attrs["overlap"] == 0
        assert attrs["name"] == Path(slide).stem and attrs["savetodir"] == str(out.resolve())
        with h5py.File(path, "r") as f:  # WSI.extract_slide_features
            coords2, feats = f["coords"][:], f["features"][:]
            fattrs = dict(f["features"].attrs)
        assert int(attrs["patch_size_level0"]) == 128
        assert (fattrs["name"], fattrs["savetodir"], fattrs["encoder"]) == (Path(slide).stem, str(out.resolve()), "efficientnet_lite0")
        rows = np.flatnonzero((tiles["slide"] == slide).to_numpy())
        assert feats.dtype == np.float32 and coords.dtype == np.int64 and feats.shape == (len(rows), 1280)
        np.testing.assert_array_equal(feats, x[rows])
        np.testing.assert_array_equal(coords, coords2)
        np.testing.assert_array_equal(coords, tiles[["x0", "y0"]].to_numpy()[rows].astype(np.int64))


def test_clam_export_reads_as_clams_readers(slide_store: Path, tmp_path: Path) -> None:
    """CLAM ``dataset_generic.py::Generic_MIL_Dataset.__getitem__``::

        full_path = os.path.join(data_dir, 'pt_files', '{}.pt'.format(slide_id))
        features = torch.load(full_path)
        ...
        full_path = os.path.join(data_dir,'h5_files','{}.h5'.format(slide_id))
        with h5py.File(full_path,'r') as hdf5_file:
            features = hdf5_file['features'][:]
            coords = hdf5_file['coords'][:]

    ``dataset_h5.py::Whole_Slide_Bag_FP``: ``self.patch_level = f['coords'].attrs['patch_level']``,
    ``self.patch_size = f['coords'].attrs['patch_size']``, ``wsi.read_region(coord, self.patch_level, (self.patch_size,
    self.patch_size))``; TRIDENT's legacy reader ``IO.read_coords_legacy`` reads the same two plus
    ``attrs.get('custom_downsample', 1)``. The slide list (``--csv_path``) has ``slide_id``; labels ``case_id``."""
    out = tmp_path / "clam"
    _export(slide_store, "clam", out)
    tiles, x = _store_rows(slide_store)
    with open(out / "slides.csv") as fh:
        listed = list(csv.DictReader(fh))
    assert sorted(r["slide_id"] for r in listed) == sorted(Path(s).stem for s in tiles["slide"].unique())
    assert {r["slide_id"]: r["case_id"] for r in listed}["normal3"] == "PN1"  # the store's patient
    for r in listed:
        slide_id = r["slide_id"]
        features = torch.load(out / "pt_files" / f"{slide_id}.pt", weights_only=True)
        with h5py.File(out / "h5_files" / f"{slide_id}.h5", "r") as hdf5_file:
            h5_features = hdf5_file["features"][:]
            coords = hdf5_file["coords"][:]
            assert dict(hdf5_file["features"].attrs) == {} and dict(hdf5_file["coords"].attrs) == {}  # save_hdf5(attr_dict=None)
        rows = np.flatnonzero((tiles["slide"] == f"{slide_id}.svs").to_numpy())
        assert isinstance(features, torch.Tensor) and features.dtype == torch.float32
        np.testing.assert_array_equal(features.numpy(), x[rows])
        np.testing.assert_array_equal(h5_features, x[rows])
        with h5py.File(out / "patches" / f"{slide_id}.h5", "r") as f:
            patch_level = f["coords"].attrs["patch_level"]
            patch_size = f["coords"].attrs["patch_size"]
            custom_downsample = f["coords"].attrs.get("custom_downsample", 1)
            np.testing.assert_array_equal(f["coords"][:], coords)
            assert tuple(f["coords"].attrs["level_dim"]) == (384, 384) and f["coords"].attrs["name"] == slide_id
        # read_region(coord, 0, (128, 128)) at level 0: the field mito embedded
        assert (patch_level, patch_size, custom_downsample) == (0, 128, 1)
        np.testing.assert_array_equal(coords, tiles[["x0", "y0"]].to_numpy()[rows].astype(np.int64))


STAMP_READER_VERSION = "2.5.0"  # the STAMP whose get_coords these files must pass


def test_stamp_export_reads_as_stamps_readers(slide_store: Path, tmp_path: Path) -> None:
    """STAMP ``modeling/data.py::get_coords``::

        coords: np.ndarray = coords_obj[:]
        if (tile_size := feature_h5.attrs.get("tile_size", None)) and feature_h5.attrs.get("unit", None) == "um": ...
        elif tile_size := feature_h5.attrs.get("tile_size_um", None):
            tile_size_um = Microns(float(tile_size)); coords_um = coords
        if (version_str := feature_h5.attrs.get("stamp_version")) and (extraction_version := Version(version_str)) > Version(stamp.__version__):
            raise RuntimeError(...)
        if not tile_size_px and "tile_size_px" in feature_h5.attrs:
            tile_size_px = TilePixels(int(feature_h5.attrs["tile_size_px"]))

    ``BagDataset.__getitem__``: ``if "feats" in h5: arr = feats_obj[()]``; ``detect_feature_type``:
    ``h5.attrs.get("feat_type")``; ``Encoder._read_h5``: the root attr ``extractor`` must be non-empty. Slide table
    (``slide_to_patient_from_slide_table_``): ``PATIENT``, ``FILENAME`` ending in ``.h5``."""
    out = tmp_path / "stamp"
    _export(slide_store, "stamp", out)
    tiles, x = _store_rows(slide_store)
    with open(out / "slide_table.csv") as fh:
        table = list(csv.DictReader(fh))
    assert all(r["FILENAME"].endswith(".h5") for r in table) and len(table) == 8
    assert {r["FILENAME"]: r["PATIENT"] for r in table}["atypical1.h5"] == "PA0"
    for r in table:
        with h5py.File(out / r["FILENAME"], "r") as feature_h5:
            coords = feature_h5["coords"][:]
            assert not (feature_h5.attrs.get("tile_size", None) and feature_h5.attrs.get("unit", None) == "um")
            tile_size = feature_h5.attrs.get("tile_size_um", None)
            assert tile_size and float(tile_size) == 32.0  # 128 level-0 px at 0.25 um/px
            version_str = feature_h5.attrs.get("stamp_version")
            assert version_str and not Version(version_str) > Version(STAMP_READER_VERSION)
            assert int(feature_h5.attrs["tile_size_px"]) == 64
            arr = feature_h5["feats"][()]
            assert feature_h5.attrs.get("feat_type") == "tile" and feature_h5.attrs.get("extractor") == "efficientnet_lite0"
            assert feature_h5.attrs["unit"] == "um" and len(feature_h5.attrs["code_hash"]) == 8
        rows = np.flatnonzero((tiles["slide"] == r["FILENAME"].replace(".h5", ".svs")).to_numpy())
        assert arr.dtype == np.float16 and coords.dtype == np.float32
        np.testing.assert_array_equal(arr.astype(np.float32), x[rows])  # the store's float16 values, exactly
        np.testing.assert_allclose(coords, tiles[["x0", "y0"]].to_numpy()[rows] * 0.25)


def test_export_refuses_an_unknown_format_in_one_line(slide_store: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", "--store", str(slide_store), "--format", "clam2", "--out", str(tmp_path / "f2")])
    assert res.exit_code == 2 and "--format must be one of trident, clam, stamp" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "f2").exists()


@pytest.mark.parametrize(
    "mpp, mag", [(0.12, 80), (0.18, 60), (0.2527, 40), (0.5, 20), (1.0, 10), (2.0, 5), (2.4, None), (float("nan"), None)]
)
def test_nominal_magnification_follows_tridents_table(mpp: float, mag: int | None) -> None:
    """``WSI._fetch_magnification``: mpp < 0.16 -> 80, < 0.2 -> 60, < 0.3 -> 40, < 0.6 -> 20, < 1.2 -> 10, < 2.4 -> 5, else error."""
    from mito.interop.trident import nominal_magnification

    assert nominal_magnification(mpp) == mag
