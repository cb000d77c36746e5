"""What a dataset was built from: [`DatasetMetadata`][formal_sae.DatasetMetadata], stored as JSON in each split's
``info.description`` and in the dataset card, and the grammar it names."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import datasets

from formal_sae.errors import DatasetError
from formal_sae.grammars import IGNORE_VALUE, FeatureSpec, Grammar, list_grammars, load_grammar


@dataclass
class DatasetMetadata:
    """What a dataset was built from; stored as JSON in ``info.description`` and the card."""

    grammar: str
    grammar_text: str
    max_length: int | None
    prompt_format: str
    prompt: list[str]
    seed: int
    splits: dict[str, int]
    features: list[dict]
    ignore_value: int = IGNORE_VALUE
    formal_sae_version: str = ""
    length_stats: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def prompt_length(self) -> int:
        return len(self.prompt)

    @property
    def feature_specs(self) -> list[FeatureSpec]:
        """The stored declarations, with what the grammar uses each feature for
        (`uses`: knowledge of the language, not stored)."""
        declared = {s.name: s for s in grammar_of(self).feature_specs}
        specs = [FeatureSpec.from_dict(d) for d in self.features]
        return [dataclasses.replace(s, uses=declared[s.name].uses) if s.name in declared else s for s in specs]

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)

    @classmethod
    def from_json(cls, text: str) -> DatasetMetadata:
        return cls(**json.loads(text))


def dataset_metadata(dataset: datasets.DatasetDict | datasets.Dataset) -> DatasetMetadata:
    """The [`DatasetMetadata`][formal_sae.DatasetMetadata] of a dataset built by formal-sae."""
    split = next(iter(dataset.values())) if isinstance(dataset, datasets.DatasetDict) else dataset
    try:
        return DatasetMetadata.from_json(split.info.description or "")
    except (json.JSONDecodeError, TypeError) as e:
        raise DatasetError(
            f"this dataset was not built by formal-sae (its info.description holds no formal-sae metadata: {e}); "
            "build it with formal_sae.build_dataset or `formal-sae generate`"
        ) from None


def grammar_of(metadata: DatasetMetadata) -> Grammar:
    """The grammar a dataset was sampled from: the registry grammar of that name if its rules
    are unchanged (with its language-specific features), else a grammar built from the stored text."""
    if metadata.grammar in list_grammars():
        grammar = load_grammar(metadata.grammar, max_length=metadata.max_length)
        if grammar.to_string() == metadata.grammar_text:
            return grammar
    return Grammar.from_string(metadata.grammar_text, name=metadata.grammar, max_length=metadata.max_length)
