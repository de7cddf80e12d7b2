"""The in-memory dataset's validation."""

from __future__ import annotations

import pytest

from dicmor.data.dataset import DataError, MultimodalDataset
from dicmor.data.synthetic import make_classification_dataset


def test_classification_without_num_classes_is_a_data_error():
    splits = make_classification_dataset(20).splits
    with pytest.raises(DataError, match="a classification dataset needs num_classes"):
        MultimodalDataset("x", "classification", None, ("text", "audio", "vision"), splits)
