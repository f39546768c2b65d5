"""Write the synthetic powder patterns of the xrd example (LiFePO4, FePO4 and a LaB6 standard).

Usage: python3 examples/xrd/make_synthetic.py [folder]   (default: examples/xrd/data)
The true densities are D = 300 and H = 500 1/um^2 (LiFePO4) and D = 150, H = 900, J = 400
(FePO4); they are written to truth.json next to the patterns.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from chemomech.xrd.synthetic import write_example_dataset


def main(folder: str) -> None:
    """Generate both samples and the standard into `folder`."""
    out = Path(folder)
    truth = {
        "LFP-synthetic": write_example_dataset(out, "LiFePO4", seed=0),
        "FP-synthetic": write_example_dataset(out, "FePO4", seed=2,
                                              truth={"D": 150.0, "H": 900.0, "J": 400.0}),
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / "data"))
