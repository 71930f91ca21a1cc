"""The embedding store: the only contract between extraction and everything trained from it."""

from mito.store.backend import Capabilities, StoreBackend, backend_capabilities
from mito.store.errors import LockedError
from mito.store.store import (
    DEFAULT_CHUNK_ROWS,
    Store,
    StoreError,
    Variant,
    check_column_names,
    create_store,
    format_zoom,
    is_view,
    open_store,
    parse_variant,
    store_exists,
    store_format,
    store_input_files,
    stored_column,
    tile_list_hash,
    views_of,
)

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "Capabilities",
    "LockedError",
    "Store",
    "StoreBackend",
    "StoreError",
    "Variant",
    "backend_capabilities",
    "check_column_names",
    "create_store",
    "format_zoom",
    "is_view",
    "open_store",
    "parse_variant",
    "store_exists",
    "store_format",
    "store_input_files",
    "stored_column",
    "tile_list_hash",
    "views_of",
]
