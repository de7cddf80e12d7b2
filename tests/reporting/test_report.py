"""The t-SNE figure and the HTML report of a sweep."""

from __future__ import annotations

import html.parser
import re
from pathlib import Path

import pytest
from tests.conftest import small_config

from dicmor.config import ConfigError
from dicmor.experiments.sweep import run_sweep
from dicmor.missing.protocols import MissingProtocol
from dicmor.reporting.report import write_report
from dicmor.reporting.tsne import plot_tsne, recovered_panels


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    changes = {"train.max_epochs": 1, "model.kernel_size": 1, "output_dir": str(out)}
    base = small_config("zero_fill", **changes)
    protocols = [
        MissingProtocol("random", 0.0),
        MissingProtocol("random", 0.4),
        MissingProtocol("fixed", keep=("fourier", "zernike")),
    ]
    methods = ["zero_fill", "cross_regression", "dicmor"]
    run_sweep(base, methods, protocols, [1], log=lambda _: None)
    return out


class Structure(html.parser.HTMLParser):
    """Tags left open or closed out of order, images, links and text."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.misnested = 0
        self.images: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes["src"])
        elif tag == "a":
            self.links.append(attributes["href"])
        if tag not in ("meta", "img"):
            self.open.append(tag)

    def handle_endtag(self, tag) -> None:
        if self.open and self.open[-1] == tag:
            self.open.pop()
        else:
            self.misnested += 1

    def handle_data(self, data) -> None:
        self.text.append(data)


def test_the_report_is_one_self_contained_well_formed_file(sweep: Path, tmp_path: Path) -> None:
    out = write_report(sweep, tmp_path / "report.html")
    document = out.read_text()
    parsed = Structure()
    parsed.feed(document)
    assert parsed.open == [] and parsed.misnested == 0
    # Curves, fixed-subset bars and t-SNE, all inline; nothing fetched from anywhere.
    assert len(parsed.images) == 3 and all(
        src.startswith("data:image/png;base64,") for src in parsed.images
    )
    assert not re.search(r"https?://|<script|<link", document)
    # Every run linked, relative to the report, to its existing folder.
    assert len(parsed.links) == 9
    for href in parsed.links:
        assert not Path(href).is_absolute() and (out.parent / href / "metrics.json").is_file()
    text = " ".join(parsed.text)
    for name in (
        "zero_fill",
        "cross_regression",
        "dicmor",
        "random MR=0.40",
        "fixed {fourier,zernike}",
    ):
        assert name in text
    for heading in (
        "Settings",
        "Results: mean ± std over seeds",
        "Metric against the missing rate",
        "Fixed subsets",
        "Distribution gaps of the recovered test entries",
        "t-SNE of real and recovered features",
        "Runs",
    ):
        assert heading in text
    # The gap table lists the recovering method only, under the protocols that hide something.
    gaps = document.split("Distribution gaps")[1].split("t-SNE")[0]
    assert "cross_regression" in gaps and "dicmor" in gaps and "zero_fill" not in gaps
    assert "random MR=0.40" in gaps and "random MR=0.00" not in gaps and "zeros" in gaps
    assert "Per class" in gaps


def test_tsne_of_a_run_and_of_a_sweep(sweep: Path, tmp_path: Path) -> None:
    panels = recovered_panels(sweep)
    fixed = "fixed {fourier,zernike}"
    assert [title for title, _ in panels] == [f"cross_regression, {fixed}", f"dicmor, {fixed}"]
    chosen = recovered_panels(sweep, "random MR=0.40")
    assert [t for t, _ in chosen] == ["cross_regression, random MR=0.40", "dicmor, random MR=0.40"]
    written = plot_tsne(chosen, tmp_path / "tsne.png")
    assert [p.name for p in written] == ["tsne.png", "tsne.pdf"]
    assert all(p.stat().st_size > 1000 for p in written)
    run = next(p.parent for p in sweep.glob("*cross_regression*MR0.40*/recovered.npz"))
    assert [title for title, _ in recovered_panels(run)] == ["cross_regression"]
    with pytest.raises(ConfigError, match=r"\.png or \.pdf"):
        plot_tsne(chosen, tmp_path / "tsne.svg")
    with pytest.raises(ConfigError, match="not recovered in every panel"):
        plot_tsne(chosen, tmp_path / "tsne.png", modality="smell")
    with pytest.raises(ConfigError, match="not in this sweep"):
        recovered_panels(sweep, "random MR=0.90")
    nothing = next(p.parent for p in sweep.glob("*dicmor*MR0.00*/recovered.npz"))
    with pytest.raises(ConfigError, match="this run recovered nothing"):
        recovered_panels(nothing)
    zero_fill = next(p.parent for p in sweep.glob("*zero_fill*MR0.40*/metrics.json"))
    with pytest.raises(ConfigError, match="kept no recovered features"):
        recovered_panels(zero_fill)
