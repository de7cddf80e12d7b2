"""Missing-modality protocols: seeded availability masks shared by every method."""

from dicmor.missing.protocols import (
    PROTOCOL_KINDS,
    MaskFileError,
    MissingProtocol,
    MissingProtocolError,
    fixed_mask,
    legacy_batch_mask,
    load_masks,
    make_masks,
    missing_rate,
    random_mask,
    save_masks,
)

__all__ = [
    "PROTOCOL_KINDS",
    "MaskFileError",
    "MissingProtocol",
    "MissingProtocolError",
    "fixed_mask",
    "legacy_batch_mask",
    "load_masks",
    "make_masks",
    "missing_rate",
    "random_mask",
    "save_masks",
]
