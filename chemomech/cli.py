"""The `chemomech` command line: one subcommand per pipeline step."""

from __future__ import annotations

import argparse
import logging
import sys

from chemomech.exceptions import ChemomechError

logger = logging.getLogger("chemomech")


def _setup_logging(verbose: bool) -> None:
    """Log to stderr on rank 0 only (other ranks log warnings and errors)."""
    from mpi4py import MPI

    rank0 = MPI.COMM_WORLD.rank == 0
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level if rank0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def _cmd_demo(args: argparse.Namespace) -> int:
    from chemomech.demo import run_demo

    run_demo(args.output)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `chemomech`."""
    parser = argparse.ArgumentParser(prog="chemomech", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job on the bundled default data")
    demo.add_argument("--output", default="results/demo", help="output folder")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `chemomech` console script."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except ChemomechError as err:
        logger.error("%s", err)
        return 2
