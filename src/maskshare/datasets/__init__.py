"""Question datasets: specs (YAML in data/datasets/; template kind, or `kind: prompts` for
complete prompts), source tables, building with the behaviour filter, and the checked items
schema.

    list_specs() -> list[DatasetSpec]
    load_spec(name) -> DatasetSpec
    add_spec(path_to_yaml) -> Path
    build_dataset(ref: DatasetRef, model, *, progress=True) -> BuiltDataset
    load_items(path) -> polars.DataFrame

May import: the root's shared modules and `maskshare.model` (building runs the model).
"""

from maskshare.datasets.build import BuiltDataset, build_dataset
from maskshare.datasets.prompts import PromptDatasetSpec, roles_note
from maskshare.datasets.registry import add_spec, list_specs, load_spec
from maskshare.datasets.schema import ITEMS_SCHEMA, load_items, validate_items
from maskshare.datasets.spec import DatasetSpec, Phrasing, SourceSpec, SplitPolicy

__all__ = [
    "BuiltDataset", "DatasetSpec", "ITEMS_SCHEMA", "Phrasing", "PromptDatasetSpec", "SourceSpec",
    "SplitPolicy", "add_spec", "build_dataset", "list_specs", "load_items", "load_spec",
    "roles_note", "validate_items",
]
