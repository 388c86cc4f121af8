"""Regenerate snn2hw/learning/data/strsbp_spsp_fit.json: ST-RSBP's fitted mean S-PSP per pre-synaptic spike.

For each neuron configuration (alpha = 1 - du, beta = 1 - dv, window T, refractory t_ref) the Monte-Carlo
tool of ``snn2hw.learning.spsp`` draws independent random post trains of each count on a grid (uniform
spike times, at least t_ref + 1 apart), computes the exact S-PSP kernel of each with the rule's own
reverse-time recursion, and averages the S-PSP that one pre spike at a uniformly random step adds:
h(o_post). A degree-6 polynomial in o_post / o_max is fitted; ST-RSBP uses its derivative as
d e_ij / d o_i = o_j h'(o_i). Seeded: the file is reproducible bit for bit.

    python scripts/fit_strsbp_spsp.py            # rewrite the file
    python scripts/fit_strsbp_spsp.py --check    # exit 1 if the stored file differs from a fresh run

Configurations not in the file are fitted on first use by the same function (milliseconds).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from snn2hw.learning.strsbp import FIT_FILE, make_fit

# (du, dv, steps, t_ref): the zoo tasks' neurons and windows, and the rules' original neuron
CONFIGS = [
    (0.25, 0.1, 60, 0),     # digits
    (0.25, 0.1, 100, 0),    # mnist10k
    (0.2, 0.1, 256, 0),     # braille
    (1 / 8, 1 / 64, 400, 2),  # HM2-BP / ST-RSBP original neuron, T = 400
    (1 / 8, 1 / 64, 100, 2),
]


def build() -> dict:
    entries = [make_fit(1.0 - du, 1.0 - dv, steps, t_ref) for du, dv, steps, t_ref in CONFIGS]
    return {"format": "snn2hw-strsbp-spsp-fit", "version": 1,
            "generator": "scripts/fit_strsbp_spsp.py (snn2hw.learning.strsbp.make_fit)", "entries": entries}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    path = Path(__file__).resolve().parent.parent / "snn2hw" / "learning" / "data" / FIT_FILE
    text = json.dumps(build(), indent=1) + "\n"
    if args.check:
        same = path.is_file() and path.read_text() == text
        print(f"{path}: {'up to date' if same else 'DIFFERS from a fresh run'}")
        return 0 if same else 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path} ({len(CONFIGS)} configurations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
