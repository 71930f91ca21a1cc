"""AMi-Br (atypical mitotic figures in breast cancer) specifics: its metadata CSV and its proxy tasks.

mito extract joins ``amibr_train_split.csv`` to an AMi-Br-shaped ImageFolder (slide, dataset, expert labels, the
published split); the expert-consensus tasks (phase, atypia) read its expert label columns.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from mito.core.tasks import TaskSpec, column_labels

META_CSV = "amibr_train_split.csv"


def join_known_metadata(root: Path, df: pd.DataFrame) -> pd.DataFrame:
    """AMi-Br layout: join slide, dataset, expert labels and the published split from amibr_train_split.csv."""
    meta_csv = root / META_CSV
    if not meta_csv.is_file():
        return df
    meta = pd.read_csv(meta_csv)
    meta = meta.drop(columns=[c for c in meta.columns if c.startswith("Unnamed")])
    meta["_stem"] = meta["dataset_uid"].astype(str).str.rsplit(".", n=1).str[0]
    meta = meta.rename(columns={"x": "slide_x", "y": "slide_y"}).drop(columns=["final_label", "dataset_uid", "uid"], errors="ignore")
    df["_stem"] = df["tile_id"].str.rsplit("/", n=1).str[-1].str.rsplit(".", n=1).str[0]
    df = df.merge(meta, on="_stem", how="left", validate="one_to_one")
    df["split"] = np.where(df["slide"].notna(), "train", "test")
    df["dataset"] = df["dataset"].fillna(df["_stem"].str.split("_").str[0])
    df["group"] = df["slide"].where(df["slide"].notna(), "unknown-slide:" + df["_stem"])
    for c in ("expert1_atypical", "expert2_atypical", "expert3_atypical", "majority_atypical"):
        if c in df:
            df[c] = df[c].astype("boolean")
    return df.drop(columns="_stem")


def expert_consensus(prefix: str) -> Callable[[pd.DataFrame], pd.Series]:
    """The sub-label both experts gave (``NMF metaphase`` -> ``metaphase``); crops they disagree on are left out."""

    def labels(tiles: pd.DataFrame) -> pd.Series:
        e1, e2 = tiles["expert1_label"].astype(object), tiles["expert2_label"].astype(object)
        agree = e1.notna() & (e1 == e2) & e1.astype(str).str.startswith(prefix + " ")
        return pd.Series([str(v)[len(prefix) + 1 :] if ok else None for v, ok in zip(e1, agree)], index=tiles.index, dtype=object)

    return labels


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("mitosis", "atypical vs normal mitotic figure", ("mitosis",), column_labels("mitosis")),
        TaskSpec(
            "phase",
            "phase of normal mitoses (expert 1 and 2 agree; AMi-Br training split)",
            ("expert1_label", "expert2_label"),
            expert_consensus("NMF"),
        ),
        TaskSpec(
            "atypia",
            "subtype of atypical mitoses (expert 1 and 2 agree; AMi-Br training split)",
            ("expert1_label", "expert2_label"),
            expert_consensus("AMF"),
        ),
        TaskSpec(
            "dataset",
            "source dataset / scanner (domain-shift probe: high scores mean scanner signal in the features)",
            ("dataset",),
            column_labels("dataset"),
        ),
    )
}
