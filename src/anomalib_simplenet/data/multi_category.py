"""Several MVTec-layout categories as one anomalib datamodule (for models that learn across categories)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.data.datasets import MVTecADDataset
from anomalib.data.utils import Split


class MultiCategoryMVTec(MVTecAD):
    """MVTec AD datamodule over several ``categories`` of one ``root``; their splits are concatenated.

    ``categories`` is exposed so that a model can learn to tell the categories apart; ``category`` is
    the names joined with ``+`` (used by anomalib for result folders). Image paths keep the layout
    ``root/<category>/...``, so each image's category can be read from its path. Other arguments are those
    of :class:`anomalib.data.MVTecAD`.
    """

    def __init__(self, root: Path | str, categories: Sequence[str], **kwargs) -> None:  # noqa: ANN003
        categories = [str(c) for c in categories] if not isinstance(categories, str) else []
        if len(categories) < 1 or len(set(categories)) != len(categories):
            msg = f"categories must be a non-empty list of unique names, got {categories!r}"
            raise ValueError(msg)
        super().__init__(root=root, category="+".join(categories), **kwargs)
        self.categories = categories

    def prepare_data(self) -> None:
        """Check that every category folder exists (nothing is downloaded)."""
        missing = [c for c in self.categories if not (self.root / c).is_dir()]
        if missing:
            msg = f"categories {missing} not found under {self.root}"
            raise FileNotFoundError(msg)

    def category_dataset(self, category: str, split: Split) -> MVTecADDataset:
        """One category's split (a subclass may read the folders differently)."""
        return MVTecADDataset(split=split, root=self.root, category=category)

    def _setup(self, _stage: str | None = None) -> None:
        def concatenated(split: Split) -> MVTecADDataset:
            datasets = [self.category_dataset(c, split) for c in self.categories]
            combined = datasets[0]
            for dataset in datasets[1:]:
                combined = combined + dataset
            return combined

        self.train_data = concatenated(Split.TRAIN)
        self.test_data = concatenated(Split.TEST)
