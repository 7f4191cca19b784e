"""The `apexloop` command. Subcommands: synth (generate the embedded default data set)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.stagecli import run_stage


def _synth(args: argparse.Namespace) -> None:
    from pipeline import synth

    synth.generate(args.out, count=args.count, seed=args.seed, multilabel=args.multilabel)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apexloop", description="ApexLoop defect-classifier pipeline"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser(
        "synth", help="generate a synthetic inspection data set with planted faults (truth.csv)"
    )
    synth.add_argument(
        "--out", type=Path, required=True, help="folder to create (must be new or empty)"
    )
    synth.add_argument("--count", type=int, default=600, help="base images before duplicates")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--multilabel", action="store_true", help="several defects per image")
    synth.set_defaults(handler=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_stage(lambda: args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
