"""The shallow extractors skip, in evaluation, a modality that no sample of the batch shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.conftest import build_model_for, train_batch


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("method", ["zero_fill", "dicmor"])
def test_a_modality_missing_from_the_whole_batch_is_not_convolved_in_evaluation(
    method: str,
) -> None:
    model, data = build_model_for(method)
    present = data.splits["train"].present
    mask = present.copy()
    mask[:8, 1] = False  # audio missing from the first batch
    hidden = train_batch(data, mask)
    k = int(np.flatnonzero(present[:8, 1])[0])
    mask[k, 1] = True  # ... but for one sample
    shown = train_batch(data, mask)
    others = [i for i in range(8) if i != k]
    conv = model.extractors.convs["audio"]
    calls = _count_calls(conv)
    model.eval()
    with torch.no_grad():
        skipped = model.extractors(hidden)
        assert calls[0] == 0
        computed = model.extractors(shown)
        assert calls[0] == 1
        expected = conv(hidden["inputs"]["audio"])  # the convolution of the zero input
    assert torch.equal(skipped["audio"], expected)
    assert not skipped["audio"].any()
    for m in data.modality_names:
        torch.testing.assert_close(skipped[m][others], computed[m][others], rtol=0.0, atol=0.0)
    # A whole forward agrees for the samples that show the same modalities in both batches.
    with torch.no_grad():
        a, b = model(hidden)["prediction"], model(shown)["prediction"]
    torch.testing.assert_close(a[others], b[others], rtol=1e-5, atol=1e-6)


def test_training_runs_every_extractor() -> None:
    model, data = build_model_for("zero_fill")
    mask = data.splits["train"].present.copy()
    mask[:8, 2] = False
    calls = _count_calls(model.extractors.convs["vision"])
    model.train()
    model.extractors(train_batch(data, mask))
    assert calls[0] == 1


def test_a_skipped_modality_still_has_its_shape_checked() -> None:
    model, data = build_model_for("zero_fill")
    mask = np.zeros_like(data.splits["train"].present)
    mask[:, 0] = True
    batch = train_batch(data, mask)
    batch["inputs"]["audio"] = batch["inputs"]["audio"][..., :-1]
    model.eval()
    with pytest.raises(ValueError, match="TemporalConv: expected input"):
        model.extractors(batch)


def test_mean_fill_convolves_a_missing_modality_it_fills_with_its_mean() -> None:
    """Mean-fill's missing inputs are not zero: a modality missing from the whole batch is
    still convolved, and the batch gives what it gives sample by sample."""
    model, data = build_model_for("mean_fill")
    mask = data.splits["train"].present.copy()
    model.train()
    model(train_batch(data, mask))  # accumulate the means
    mask[:8, 1] = False
    batch = train_batch(data, mask)
    calls = _count_calls(model.extractors.convs["audio"])
    model.eval()
    with torch.no_grad():
        whole = model(batch)["prediction"][:8]
        assert calls[0] == 1 and model.means["audio"].value().abs().sum() > 0
        for i in range(8):
            one = {k: v for k, v in batch.items() if k not in ("inputs", "available")}
            one = {**one, "available": batch["available"][i : i + 1]}
            one["inputs"] = {m: x[i : i + 1] for m, x in batch["inputs"].items()}
            torch.testing.assert_close(model(one)["prediction"], whole[i : i + 1])
