"""The `apexloop` command.

Subcommands: synth (generate the embedded default data set), predict (score images at the
operating point), export (TorchScript/ONNX), report (markdown for a pull request).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.stagecli import run_stage


def _synth(args: argparse.Namespace) -> None:
    from pipeline import synth

    synth.generate(args.out, count=args.count, seed=args.seed, multilabel=args.multilabel)


def _predict(args: argparse.Namespace) -> None:
    from pipeline import predict

    thresholds = args.thresholds or args.model.parent / "thresholds.json"
    table = predict.predict(args.model, thresholds, args.inputs, args.batch_size)
    predict.write_table(table, args.out)


def _report(args: argparse.Namespace) -> None:
    import sys

    from pipeline import report

    markdown = report.build_report(Path.cwd(), args.base, plots_dir=args.plots_dir)
    if args.out is None:
        sys.stdout.write(markdown)
    else:
        report.write_report(args.out, markdown)


def _export(args: argparse.Namespace) -> None:
    import logging

    from pipeline import export

    for name in ("onnxscript", "onnx_ir"):  # the ONNX exporter's pass-by-pass INFO lines
        logging.getLogger(name).setLevel(logging.WARNING)
    export.export(args.model, args.out, args.formats)


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
    predict = commands.add_parser(
        "predict", help="score image files or folders; decisions at the evaluated operating point"
    )
    predict.add_argument("--model", type=Path, required=True, help="checkpoint from train")
    predict.add_argument(
        "--thresholds", type=Path, help="operating point (default: thresholds.json beside --model)"
    )
    predict.add_argument("--out", type=Path, required=True, help="a .csv or .parquet file")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("inputs", type=Path, nargs="+", help="image files and/or folders")
    predict.set_defaults(handler=_predict)
    report = commands.add_parser(
        "report", help="markdown comparing the working tree's params/metrics/plots with a revision"
    )
    report.add_argument("--base", required=True, help="git revision to compare against")
    report.add_argument("--out", type=Path, help="write the markdown here (default: stdout)")
    report.add_argument(
        "--plots-dir", type=Path, help="also write `dvc plots diff` HTML into this folder"
    )
    report.set_defaults(handler=_report)
    export = commands.add_parser(
        "export", help="TorchScript/ONNX files + export.json for line-side runtimes, parity-checked"
    )
    export.add_argument("--model", type=Path, required=True, help="checkpoint from train")
    export.add_argument("--out", type=Path, required=True, help="folder for the exported files")
    export.add_argument(
        "--formats", nargs="+", choices=["torchscript", "onnx"], default=["torchscript", "onnx"]
    )
    export.set_defaults(handler=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_stage(lambda: args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
