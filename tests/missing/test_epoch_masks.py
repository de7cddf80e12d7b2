"""Training masks redrawn every epoch: seeded by (seed, epoch), exact rate, valid/test fixed."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import small_config

from dicmor.data.synthetic import make_classification_dataset
from dicmor.missing.protocols import MissingProtocol, epoch_mask, missing_rate
from dicmor.training.stages import training_batches

NAMES = ("a", "b", "c")


def test_same_seed_gives_the_same_sequence_and_epochs_differ() -> None:
    present = np.ones((60, 3), dtype=bool)
    protocol = MissingProtocol("random", 0.4)
    first = [epoch_mask(protocol, present, NAMES, 7, e) for e in range(4)]
    again = [epoch_mask(protocol, present, NAMES, 7, e) for e in range(4)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], epoch_mask(protocol, present, NAMES, 8, 0))


def test_the_realised_rate_is_exact_every_epoch_and_absent_entries_stay_absent() -> None:
    present = np.ones((50, 3), dtype=bool)
    present[::7, 1] = False
    protocol = MissingProtocol("random", 0.5)
    for epoch in range(6):
        mask = epoch_mask(protocol, present, NAMES, 3, epoch)
        assert missing_rate(mask) == pytest.approx(75 / 150)
        assert not (mask & ~present).any()
        assert mask.any(axis=1).all()


def test_legacy_batch_schedule_is_laid_over_the_epochs_order() -> None:
    present = np.ones((40, 3), dtype=bool)
    protocol = MissingProtocol("legacy-batch", 0.5, batch_size=10)
    order = np.random.default_rng(0).permutation(40)
    mask = epoch_mask(protocol, present, NAMES, 1, 2, order)
    # MR 0.5 (two = 0.7, one = 0.1): of 4 batches in loader order, batches 0-2 keep one
    # modality (10·b < 28) and batch 3 drops one (10·b < 32), each the same for the whole batch.
    in_order = mask[order]
    assert (in_order[:30].sum(axis=1) == 1).all()
    assert (in_order[30:].sum(axis=1) == 2).all()
    for start in range(0, 40, 10):
        batch = in_order[start : start + 10]
        assert (batch == batch[0]).all()
    with pytest.raises(ValueError, match="permutation"):
        epoch_mask(protocol, present, NAMES, 1, 2, order[:-1])


def test_training_batches_redraw_the_train_mask_and_keep_valid_fixed(tmp_path) -> None:
    data = make_classification_dataset(100, num_classes=2, modalities={m: (2, 3) for m in NAMES})
    presents = {s: split.present for s, split in data.splits.items()}
    protocol = MissingProtocol("random", 0.5)
    masks = {s: epoch_mask(protocol, p, NAMES, 1, 0, split=s) for s, p in presents.items()}
    config = small_config("zero_fill", **{"train.redraw_masks": True}).train
    train, valid = training_batches(data, masks, config, protocol=protocol)
    seen_train, seen_valid = [], []
    for _ in range(3):
        rows = {}
        for batch in train:
            for i, row in zip(batch["index"].tolist(), batch["available"], strict=True):
                rows[i] = row.numpy()
        seen_train.append(np.stack([rows[i] for i in range(len(rows))]))
        seen_valid.append(np.concatenate([b["available"].numpy() for b in valid]))
    for epoch, mask in enumerate(seen_train):
        expected = epoch_mask(protocol, presents["train"], NAMES, config.seed, epoch)
        np.testing.assert_array_equal(mask, expected)
    assert not np.array_equal(seen_train[0], seen_train[1])
    for mask in seen_valid:
        np.testing.assert_array_equal(mask, masks["valid"])
    fixed = small_config("zero_fill").train
    train, _ = training_batches(data, masks, fixed, protocol=protocol)
    for _ in range(2):
        rows = {}
        for batch in train:
            for i, row in zip(batch["index"].tolist(), batch["available"], strict=True):
                rows[i] = row.numpy()
        np.testing.assert_array_equal(np.stack([rows[i] for i in range(len(rows))]), masks["train"])
