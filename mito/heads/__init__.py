"""Heads trained from the embedding store: features, noise, training loop, save/load, predict."""

from mito.heads.bags import BagReader, Bags, BagSet, bag_table, left_out, left_out_line, make_bags
from mito.heads.base import OPTIONAL_HEADS, HeadError, head_class, head_modules, head_names, make_head, noise_variance, register_head
from mito.heads.calibrate import apply_temperature, fit_temperature
from mito.heads.engine import fit_and_score
from mito.heads.ensemble import Ensemble, load_ensemble, parse_ensemble
from mito.heads.features import FeaturePipeline, metadata_categories, one_hot, select_features
from mito.heads.fit import FitResult, StoreRows, fit_on_rows
from mito.heads.loop import Checkpointer, CheckpointError, EarlyStopping, LoopResult, TimeBudget, train_loop
from mito.heads.mil import MILHead, load_mil_head, make_mil_head, mil_head_names
from mito.heads.model import Callback, EpochCallback, Model, lookup, make, names, register
from mito.heads.predict import TileModel, load_head, load_model, predict, predict_store
from mito.heads.slide import (
    SlideFitConfig,
    SlideModel,
    fit_slide_head,
    load_slide_model,
    make_slide_fit_config,
    predict_slides,
    tiles_csv_path,
)
from mito.heads.split import make_split
from mito.heads.stream import FeatureStream, fit_pipeline_stream, stream_proba
from mito.heads.train import FitConfig, backbone_variants, default_features, fit_head, make_fit_config
from mito.heads.zeroshot import run_zero_shot, zero_shot_proba

# the default set: heads that need only features (OPTIONAL_HEADS such as text-linear are asked for by name)
HEAD_NAMES: tuple[str, ...] = tuple(n for n in head_names() if n not in OPTIONAL_HEADS)

__all__ = [
    "HEAD_NAMES",
    "head_modules",
    "Ensemble",
    "load_ensemble",
    "parse_ensemble",
    "apply_temperature",
    "fit_temperature",
    "run_zero_shot",
    "zero_shot_proba",
    "OPTIONAL_HEADS",
    "BagReader",
    "Bags",
    "MILHead",
    "SlideFitConfig",
    "fit_slide_head",
    "SlideModel",
    "load_slide_model",
    "load_mil_head",
    "bag_table",
    "left_out",
    "left_out_line",
    "make_bags",
    "make_mil_head",
    "make_slide_fit_config",
    "mil_head_names",
    "predict_slides",
    "predict_store",
    "tiles_csv_path",
    "CheckpointError",
    "Checkpointer",
    "EarlyStopping",
    "LoopResult",
    "TimeBudget",
    "backbone_variants",
    "default_features",
    "train_loop",
    "FeaturePipeline",
    "FeatureStream",
    "FitConfig",
    "FitResult",
    "HeadError",
    "Model",
    "TileModel",
    "Callback",
    "EpochCallback",
    "lookup",
    "make",
    "names",
    "register",
    "fit_and_score",
    "StoreRows",
    "BagSet",
    "fit_head",
    "fit_on_rows",
    "fit_pipeline_stream",
    "head_class",
    "load_head",
    "load_model",
    "make_fit_config",
    "make_head",
    "make_split",
    "metadata_categories",
    "noise_variance",
    "one_hot",
    "predict",
    "register_head",
    "select_features",
    "stream_proba",
]
