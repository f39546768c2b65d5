#!/usr/bin/env python3
"""Run an inversion from a YAML config: `mpirun -n K python3 scripts/invert.py config.yaml`.

Same as `chemomech invert config.yaml` (see README for the config keys).
"""

import sys

from chemomech.cli import main

if __name__ == "__main__":
    sys.exit(main(["invert", *sys.argv[1:]]))
