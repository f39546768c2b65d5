"""The `chemomech` command line: one subcommand per pipeline step.

Each step's module owns its arguments (`add_*_arguments(parser)`) and its entry point
(`cmd_*(args) -> int`); this module only lists them, so `chemomech STEP --help` documents
every option with its default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("chemomech")

#: subcommand -> (module, function adding its arguments, entry point, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "import": ("chemomech.correlative.importing", "add_import_arguments", "cmd_import",
               "convert .mat / py4DSTEM / composition maps to a stack file"),
    "synth": ("chemomech.synth", "add_arguments", "run_synth",
              "write synthetic twin particles with known truth (default: ten particles)"),
    "composition": ("chemomech.correlative.composition", "add_composition_arguments",
                    "cmd_composition",
                    "Li fraction X from an X-ray optical-density stack (per-pixel NNLS)"),
    "register": ("chemomech.correlative.registration", "add_register_arguments", "cmd_register",
                 "affine registration of X-ray maps onto the 4D-STEM grid"),
    "analyze": ("chemomech.analysis.data", "add_analysis_arguments", "cmd_analysis",
                "lattice parameters vs X per group and interface widths"),
    "mesh": ("chemomech.cli", "add_mesh_arguments", "cmd_mesh",
             "mesh a particle mask (gmsh) and write it as XDMF"),
    "invert": ("chemomech.cli", "add_invert_arguments", "cmd_invert",
               "learn the eigenstrain law (M0/M1) from a YAML config"),
    "xrd": ("chemomech.cli", "add_xrd_arguments", "cmd_xrd",
            "dislocation densities per slip system from powder line profiles"),
    "phasefield": ("chemomech.phasefield.run", "add_arguments", "cmd_phasefield",
                   "relax a Cahn-Hilliard + coherency-elasticity particle; writes a stack"),
    "demo": ("chemomech.demo", "add_demo_arguments", "cmd_demo",
             "run the main job on the bundled default data"),
}


def add_invert_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `chemomech invert`."""
    parser.add_argument("config", help="YAML run configuration (see README)")
    parser.add_argument("--output", help="override the config's output folder")
    from chemomech.config import parse_degree

    parser.add_argument("--degree", type=parse_degree,
                        help="override legendre_degree (integer or 'auto')")
    parser.add_argument("--model", choices=("M0", "M1", "M2"), help="override the model")
    parser.add_argument("--resume", action="store_true",
                        help="continue the newest killed or failed run into the same output "
                             "from its optimiser checkpoints (same answer as uninterrupted)")


def cmd_invert(args: argparse.Namespace) -> int:
    """`chemomech invert config.yaml`: run the configured inversion (chemomech.pipeline)."""
    from chemomech.config import load_config
    from chemomech.io.parallel import stage
    from chemomech.pipeline import run

    with stage("reading the configuration"):
        config = load_config(args.config, output=args.output, legendre_degree=args.degree,
                             model=args.model)
    run(config, resume=args.resume)
    return 0


def add_mesh_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `chemomech mesh`."""
    parser.add_argument("input", help="a stack file or any input of `chemomech import`")
    parser.add_argument("-o", "--output", required=True, help="mesh file to write (.xdmf)")
    parser.add_argument("--particle", help="particle name (default: the first)")
    parser.add_argument("--mesh-size-px", type=float, default=1.0, help="element size (px)")
    parser.add_argument("--simplify-tol-px", type=float, default=0.25,
                        help="boundary simplification tolerance (px)")
    parser.add_argument("--min-island-px", type=int, default=20,
                        help="drop islands smaller than this (px)")
    parser.add_argument("--refine", action="store_true",
                        help="refine to 0.5 px where the composition gradient is high")


def cmd_mesh(args: argparse.Namespace) -> int:
    """`chemomech mesh INPUT -o mesh.xdmf`: gmsh mesh of one particle's mask (nm)."""
    from mpi4py import MPI

    from chemomech.exceptions import InputError
    from chemomech.io.parallel import import_deferred
    from chemomech.io.readers import read_particles
    from chemomech.mechanics.mesh import mesh_from_mask
    from chemomech.pipeline import COMPILED_MODULES

    import_deferred(*COMPILED_MODULES)
    output = Path(args.output)
    if output.suffix != ".xdmf":  # XDMFFile writes the mesh beside it as OUTPUT.h5
        raise InputError(f"the mesh file must end in .xdmf, got {output.name!r}",
                         field="--output")
    if not output.parent.is_dir() or not os.access(output.parent, os.W_OK):
        raise InputError(f"cannot write into {output.parent} (not a writable folder)",
                         field="--output")
    particles = read_particles([args.input])
    if args.particle:
        particles = [p for p in particles if p.name == args.particle]
        if not particles:
            raise InputError(f"no particle named {args.particle!r}", path=args.input)
    p = particles[0]
    try:
        pm = mesh_from_mask(p.mask, p.pixel_size_nm, MPI.COMM_WORLD,
                            mesh_size_px=args.mesh_size_px, simplify_tol_px=args.simplify_tol_px,
                            min_island_px=args.min_island_px,
                            refine=p.X if args.refine else None)
    except InputError as err:  # name the particle, the file and the flags
        raise InputError(f"particle {p.name!r} ({int(p.mask.sum())} px): {err} (see "
                         "--min-island-px, --mesh-size-px)", path=args.input) from None
    pm.write_xdmf(args.output)
    logger.info("mesh of %s: %d cells, area %.4g um^2 -> %s", p.name,
                pm.mesh.topology.index_map(2).size_global, pm.area_nm2 * 1e-6, args.output)
    return 0


def add_xrd_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `chemomech xrd`."""
    parser.add_argument("config", help="YAML configuration of the line-profile analysis")
    parser.add_argument("--output", default="results/xrd", help="output folder")


def cmd_xrd(args: argparse.Namespace) -> int:
    """`chemomech xrd config.yaml`: variance-method densities per slip system (chemomech.xrd)."""
    from chemomech.xrd.config import run_xrd

    run_xrd(args.config, args.output)
    return 0


def _setup_logging(verbose: bool) -> None:
    """Log to stderr on rank 0 only (other ranks log warnings and errors)."""
    from mpi4py import MPI

    rank0 = MPI.COMM_WORLD.rank == 0
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level if rank0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("matplotlib", "PIL", "h5py", "UFL", "FFCx", "ffcx", "ufl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `chemomech STEP: error: ...`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `chemomech`, one subparser per entry of COMMANDS."""
    parser = _Parser(prog="chemomech", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, add, cmd, text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=text, description=text)
        mod = importlib.import_module(module)
        getattr(mod, add)(sub_parser)
        sub_parser.set_defaults(func=getattr(mod, cmd))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `chemomech` console script.

    Errors are one line on stderr (`chemomech.io.parallel.exit_on_error`): domain and
    file-system errors exit 2, SIGINT 130 and SIGTERM 143 (both clean up temporaries first),
    bugs 1 with a traceback; under MPI an error on one rank ends every rank."""
    from chemomech.io.parallel import (
        exit_on_error,
        install_signal_handlers,
        restore_signal_handlers,
    )

    def command() -> int:
        args = build_parser().parse_args(argv)
        _setup_logging(args.verbose)
        return args.func(args)

    previous = install_signal_handlers()
    try:
        return exit_on_error(command)
    finally:
        restore_signal_handlers(previous)
