"""`chemomech import`: data files -> frame check -> a stack file (written atomically).

The readers (`chemomech.io.readers`) turn each file into particles; the frame check
(`chemomech.correlative.frames`) warns about, or adopts, the most compatible frame.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chemomech.correlative.frames import frame_check as check
from chemomech.exceptions import InputError
from chemomech.io.readers import read_particles
from chemomech.io.stack import check_interior, read_stack, write_stack

logger = logging.getLogger(__name__)


def import_to_stack(inputs: Sequence[str | Path], output: str | Path, *,
                    frame_check: str = "warn", append: bool = False,
                    **read_options: Any) -> Path:
    """Read `inputs` (see `read_particles`), check frames, write a stack file atomically.

    `frame_check`: "off", "warn" (log when the stated frame is not the most compatible) or
    "adopt" (store the most compatible frame).  `append` adds to an existing stack.
    Nothing is written unless every step succeeds.
    """
    if frame_check not in ("off", "warn", "adopt"):
        raise InputError(f"frame_check must be off, warn or adopt, got {frame_check!r}",
                         field="frame_check")
    particles = read_particles(inputs, **read_options)
    for p in particles:
        check_interior(p)
    if frame_check != "off":
        particles = [check(p, adopt=frame_check == "adopt").particle for p in particles]
    output = Path(output)
    if append and output.exists():
        existing = read_stack(output)
        names = {p.name for p in particles}
        particles = [p for p in existing if p.name not in names] + particles
    return write_stack(output, particles)


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `chemomech import`."""
    parser.add_argument("inputs", nargs="+",
                        help="a .mat (reference study), a stack .h5, a particle .npz, or a "
                             "strain file (py4DSTEM .h5 / .npz) plus a composition file "
                             "(.npz, .tif, .h5)")
    parser.add_argument("-o", "--output", required=True, help="stack file to write (.h5)")
    parser.add_argument("--name", default=None, help="particle name (default: file stem)")
    parser.add_argument("--pixel-size-nm", type=float, default=None,
                        help="pixel size in nm (default: from the file; .mat: 16.6)")
    parser.add_argument("--rotation-rad", type=float, default=None,
                        help="angle from image x (axis 0) to crystal a, ccw (default: from "
                             "the file; .mat: -rot, see --mat-rotation)")
    parser.add_argument("--mat-rotation", choices=("documented", "file"), default="documented",
                        help="for .mat: 'documented' = -rot (x = axis 0 convention), "
                             "'file' = rot as stored")
    parser.add_argument("--strain-frame", choices=("crystal", "image"), default=None,
                        help="frame of the strain maps (default: .mat crystal, py4DSTEM image)")
    parser.add_argument("--theta-sign", type=int, choices=(1, -1), default=None,
                        help="s in H = [[e_aa, e_ac + s theta], [e_ac - s theta, e_cc]] "
                             "(default +1)")
    parser.add_argument("--frame-check", choices=("off", "warn", "adopt"), default="warn",
                        help="compatibility check of the frame (default: warn)")
    parser.add_argument("--group", default=None, metavar="NAME",
                        help="which strain map of a py4DSTEM file holding several: its last "
                             "path component (e.g. strain_map_rotated) or its full path")
    parser.add_argument("--keep-largest", action="store_true",
                        help="keep only the largest connected piece of the mask")
    parser.add_argument("--append", action="store_true", help="add to an existing stack")


def cmd_import(args: argparse.Namespace) -> int:
    """`chemomech import INPUTS... -o STACK.h5`: convert data files to a stack file."""
    options: dict[str, Any] = dict(name=args.name, pixel_size_nm=args.pixel_size_nm,
                                   rotation_rad=args.rotation_rad,
                                   strain_frame=args.strain_frame, theta_sign=args.theta_sign,
                                   mat_rotation=args.mat_rotation,
                                   keep_largest=args.keep_largest, group=args.group)
    out = import_to_stack(args.inputs, args.output, frame_check=args.frame_check,
                          append=args.append, **options)
    logger.info("wrote %s", out)
    return 0

