"""Named sweep plans: the methods, protocols and seeds of a published comparison, in one name.

``paper`` is DiCMoR's main comparison (Wang et al., ICCV 2023, Tables 1-2): its five comparison
systems and DiCMoR, on shared masks, under

- the ``legacy-batch`` schedule at MR 0.1 … 0.7 (the public code's per-batch missing rates, for
  comparison with the published numbers);
- the exact ``random`` protocol at the same rates up to (M − 1)/M (2/3 with three modalities;
  higher rates cannot leave every sample a modality and are left out);
- the fixed subsets: every non-empty proper subset of the modalities kept (six with three);

over seeds 1111-1119.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from dicmor.config import ConfigError
from dicmor.missing.protocols import MissingProtocol

RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass(frozen=True)
class Plan:
    """What a sweep trains: methods × protocols × seeds."""

    methods: tuple[str, ...]
    protocols: tuple[MissingProtocol, ...]
    seeds: tuple[int, ...]


def paper_plan(modality_names: Sequence[str], batch_size: int) -> Plan:
    """DiCMoR's comparison for data with ``modality_names`` (see the module docstring)."""
    names = tuple(modality_names)
    most = (len(names) - 1) / len(names)
    protocols = [MissingProtocol("legacy-batch", rate, batch_size=batch_size) for rate in RATES]
    protocols += [MissingProtocol("random", rate) for rate in RATES if rate <= most + 1e-9]
    protocols += [
        MissingProtocol("fixed", keep=subset)
        for size in range(1, len(names))
        for subset in itertools.combinations(names, size)
    ]
    methods = ("dcca", "dccae", "mctn", "mmin", "gcnet", "dicmor")
    return Plan(methods, tuple(protocols), tuple(range(1111, 1120)))


PLANS = {"paper": paper_plan}
"""Plan name → function of (modality names, batch size)."""


def get_plan(name: str, modality_names: Sequence[str], batch_size: int) -> Plan:
    """The plan ``name`` for the data's modalities; unknown names list the known ones."""
    if name not in PLANS:
        raise ConfigError(f"--plan: unknown plan {name!r} (known: {', '.join(PLANS)})")
    return PLANS[name](modality_names, batch_size)
