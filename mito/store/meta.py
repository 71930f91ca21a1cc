"""The store's ``mito`` attributes, validated: a hand-edited or damaged attribute is named, never trusted."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator


class TileColumn(BaseModel):
    """One column of the tile table and how it is stored."""

    model_config = ConfigDict(extra="allow")

    name: StrictStr
    kind: Literal["str", "int", "float", "bool"]


class VariantMeta(BaseModel):
    """One variant's dimension (its provenance fields are kept as they are)."""

    model_config = ConfigDict(extra="allow")

    dim: StrictInt = Field(ge=1)


class StoreMeta(BaseModel):
    """The fields every reader relies on; everything else (source, versions, last_run ...) is kept as is."""

    model_config = ConfigDict(extra="allow")

    store_version: StrictInt = Field(ge=1)
    n_tiles: StrictInt = Field(ge=1)
    chunk_rows: StrictInt = Field(ge=1)
    tile_columns: list[TileColumn]
    tile_list_sha256: StrictStr
    variants: dict[str, VariantMeta] = Field(default_factory=dict)
    tasks: list[StrictStr] = Field(default_factory=list)

    @field_validator("tile_columns")
    @classmethod
    def _has_tile_id(cls, v: list[TileColumn]) -> list[TileColumn]:
        if "tile_id" not in [c.name for c in v]:
            raise ValueError("the tile table has no tile_id column")
        return v

    @field_validator("variants")
    @classmethod
    def _keys(cls, v: dict[str, VariantMeta]) -> dict[str, VariantMeta]:
        for k in v:
            parts = k.split(":")
            ok = len(parts) in (3, 4) and parts[1].startswith("z") and all(parts) and (len(parts) == 3 or parts[3].isalnum())
            try:
                ok = ok and float(parts[1][1:]) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"bad variant name {k!r}")
        return v


def meta_problems(meta: Any) -> list[str]:
    """One line per thing wrong with the attributes (empty when a reader can rely on them)."""
    if not isinstance(meta, dict) or not meta:
        return ["no mito attributes"]
    try:
        StoreMeta.model_validate(meta)
    except ValidationError as e:
        out = []
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"]) or "attributes"
            got = err.get("input")
            shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
            out.append(f"attribute {where}: {err['msg'].removeprefix('Value error, ')} (found {shown[:60]})")
        return out
    return []
