"""The ``dicmor`` command line: one function per command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from dicmor.config import Config, load_config, parse_override, preset_names
from dicmor.errors import ConfigError, InputError
from dicmor.missing.protocols import MissingProtocol
from dicmor.outputs import writable_file, write_atomic, write_text


def _config_from_args(args: argparse.Namespace) -> Config:
    overrides = dict(parse_override(text) for text in args.set or [])
    config = load_config(args.config, overrides)
    changes: dict[str, object] = {}
    if getattr(args, "method", None):
        changes["model.method"] = args.method
    if getattr(args, "seed", None) is not None:
        changes["train.seed"] = args.seed
    if getattr(args, "device", None):
        changes["train.device"] = args.device
    if getattr(args, "output_dir", None):
        changes["output_dir"] = args.output_dir
    if getattr(args, "data", None):
        changes["data.source"] = args.data
    config = config.replace(**changes)
    if getattr(args, "missing", None) is not None:
        if not args.missing.strip():
            raise ConfigError(
                "--missing is empty: give none, random:RATE, fixed:NAME+NAME or legacy-batch:RATE"
            )
        protocol = MissingProtocol.from_string(args.missing, batch_size=config.train.batch_size)
        config = replace(config, missing=protocol)
    return config


def cmd_train(args: argparse.Namespace) -> None:
    """Train one method under one missing protocol and report its test metrics."""
    from dicmor.experiments.run import run_experiment
    from dicmor.reporting.tables import metrics_table

    config = _config_from_args(args)
    masks, mask_names = None, None
    if args.masks:
        from dicmor.missing.protocols import load_masks

        masks, mask_names = load_masks(args.masks)
        with np.load(args.masks, allow_pickle=False) as saved:
            protocol = MissingProtocol.from_string(str(saved["protocol"]))
        config = replace(config, missing=protocol)
    result = run_experiment(
        config, name=args.name, masks=masks, mask_names=mask_names, restart=args.restart
    )
    from dicmor.training import distributed

    world = distributed.current()
    if world is not None:
        distributed.finish()
        if not world.main:  # rank 0 reports the run
            return
    row = {
        "method": config.model.method,
        "protocol": str(config.missing),
        "metrics": result.metrics,
    }
    print(metrics_table([row], result.model.info.task, ["method", "protocol"]))
    print(f"run written to {result.run_dir}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Evaluate a trained run under any protocol (or saved masks) on one split."""
    from dicmor.data import load_data
    from dicmor.evaluation.evaluate import evaluate_run, evaluation_masks
    from dicmor.reporting.tables import metrics_table
    from dicmor.training.checkpoints import load_checkpoint
    from dicmor.training.stages import resolve_device

    device = resolve_device(args.device or "cpu")
    model, config = load_checkpoint(args.run, device)
    dataset = load_data(config.data)
    settings = evaluation_masks(
        dataset,
        config,
        masks_path=args.masks,
        missing=args.missing,
        subsets=args.subsets,
        seed=args.seed,
    )
    rows = evaluate_run(model, config, dataset, settings, args.split, device)
    print(metrics_table(rows, model.info.task, ["method", "protocol", "split"]))
    run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    if args.gaps:
        _report_gaps(model, dataset, settings, args.split, run_dir)
    with open(run_dir / "evaluations.jsonl", "a") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def _report_gaps(model, dataset, settings, split: str, run_dir: Path) -> None:
    """Print and save the distribution gaps of the recovered entries of ``split``."""
    from dicmor.models.recovery import Recovering
    from dicmor.reporting.gaps import distribution_gaps, gaps_table

    if not isinstance(model, Recovering):
        raise ConfigError(f"evaluate --gaps: method '{model.name}' recovers no features")
    report = {}
    for label, masks in settings:
        gaps = distribution_gaps(
            model, dataset.splits[split], dataset.modality_names, masks[split], task=model.info.task
        )
        print(f"\nrecovered {split} entries against the real ones, {label} (zeros in parentheses)")
        print(gaps_table(gaps) if gaps else "nothing recovered")
        report[label] = gaps
    write_text(run_dir / "gaps.json", json.dumps({"split": split, "gaps": report}, indent=1))
    print(f"gaps written to {run_dir / 'gaps.json'}")


def cmd_predict(args: argparse.Namespace) -> None:
    """Predict for new samples (no labels; absent modalities allowed per sample)."""
    from dicmor.inference import predict, read_inputs, write_predictions
    from dicmor.training.checkpoints import load_checkpoint
    from dicmor.training.stages import resolve_device

    writable_file(args.out)
    if args.recovered is not None:
        writable_file(args.recovered)
    device = resolve_device(args.device or "cpu")
    model, _ = load_checkpoint(args.run, device)
    result = predict(
        model,
        **read_inputs(args.inputs),
        device=device,
        return_features=args.recovered is not None,
        fast=args.fast,
    )
    write_predictions(result, args.out, model.info.modality_names)
    print(f"{len(result.ids)} predictions written to {args.out}")
    if args.recovered is not None:
        write_atomic(
            args.recovered,
            lambda partial: np.savez_compressed(partial, id=result.ids, **result.features),
        )
        print(f"features with recovered entries written to {args.recovered}")


def cmd_demo(args: argparse.Namespace) -> None:
    """Train each method at several missing rates on the embedded dataset; print one table and
    write the sweep's HTML report."""
    from dicmor.reporting.report import write_report

    _sweep(args, seeds=[args.seed] if args.seed is not None else None, resume=False)
    out_dir = Path(_config_from_args(args).output_dir)
    report = write_report(out_dir, out_dir / "report.html")
    print(f"report written to {report}")


def cmd_sweep(args: argparse.Namespace) -> None:
    """Train methods × missing protocols × seeds on the same masks; print mean ± std."""
    seeds = args.seeds or (None if args.plan else [1111, 1112, 1113])
    _sweep(args, seeds=seeds, resume=not args.rerun)


def _sweep(args: argparse.Namespace, seeds: list[int] | None, resume: bool) -> None:
    from dicmor.experiments.sweep import run_sweep
    from dicmor.registry import model_names
    from dicmor.training import distributed

    if distributed.launched():
        raise ConfigError(
            "sweeps run one process per run: start them without torchrun (--workers N or "
            "--executor ray train runs in parallel); torchrun is for one run, with train"
        )

    base = _config_from_args(args)
    # A named plan supplies the defaults; --methods, --missing and --seeds narrow it.
    dataset, plan = None, None
    if getattr(args, "plan", None):
        from dicmor.data import load_data
        from dicmor.experiments.plans import get_plan

        dataset = load_data(base.data)
        plan = get_plan(args.plan, dataset.modality_names, base.train.batch_size)
    default_methods = [m for m in ("zero_fill", "dicmor") if m in model_names()]
    methods = args.methods or (list(plan.methods) if plan else default_methods)
    if args.protocols:
        protocols = [
            MissingProtocol.from_string(text, batch_size=base.train.batch_size)
            for text in args.protocols
        ]
    elif plan:
        protocols = list(plan.protocols)
    else:
        protocols = [
            MissingProtocol(kind="random", rate=rate) if rate != 0 else MissingProtocol()
            for rate in args.rates
        ]
    seeds = seeds or (list(plan.seeds) if plan else [base.train.seed])
    _, _, table = run_sweep(
        base,
        methods,
        protocols,
        seeds,
        resume=resume,
        dataset=dataset,
        workers=getattr(args, "workers", None),
        executor=getattr(args, "executor", "process"),
        address=getattr(args, "address", None),
        cpus_per_run=getattr(args, "cpus_per_run", None),
        gpus_per_run=getattr(args, "gpus_per_run", None),
    )
    print()
    print(table)


def cmd_plot(args: argparse.Namespace) -> None:
    """Plot a sweep's metric against the missing rate (or per protocol), mean ± std."""
    if args.kind == "tsne":
        from dicmor.reporting.tsne import plot_tsne, recovered_panels

        out = args.out if args.out != "sweep.png" else "tsne.png"
        written = plot_tsne(recovered_panels(args.sweep, args.protocol), out, args.modality)
        print("t-SNE written to " + " and ".join(str(p) for p in written))
        return
    from dicmor.reporting.plots import plot_summary, read_summary

    out = plot_summary(read_summary(args.sweep), args.out, args.metric)
    print(f"plot written to {out}")


def cmd_report(args: argparse.Namespace) -> None:
    """Write one self-contained HTML report of a sweep (tables, curves, gaps, t-SNE, runs)."""
    from dicmor.reporting.report import write_report

    out = write_report(args.sweep, args.out)
    print(f"report written to {out}")


def cmd_table(args: argparse.Namespace) -> None:
    """Print (or write) a sweep's table as text, Markdown, LaTeX or CSV, mean ± std over seeds."""
    from dicmor.reporting.plots import read_summary
    from dicmor.reporting.tables import metrics_table, paper_table

    if args.out:
        writable_file(args.out)
    summary = read_summary(args.sweep)
    if args.layout == "paper":
        table = paper_table(summary["rows"], summary["task"], args.format, args.metrics)
    else:
        table = metrics_table(
            summary["rows"], summary["task"], ["protocol", "method", "n"], args.format, args.metrics
        )
    if args.out:
        write_text(args.out, table + "\n")
        print(f"table written to {args.out}")
    else:
        print(table)


def cmd_data_inspect(args: argparse.Namespace) -> None:
    """Print splits, modalities, shapes, label statistics, non-finite and missing counts."""
    from dicmor.config import DataConfig
    from dicmor.data import describe, load_data

    print(describe(load_data(DataConfig(source=args.source))))


def cmd_models(args: argparse.Namespace) -> None:
    """List the registered methods."""
    from dicmor.registry import get_model_class, model_names

    names = model_names()
    width = max(len(name) for name in names)
    for name in names:
        doc = (get_model_class(name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:{width}s}  {doc}")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        nargs="?",
        default="demo",
        help=f"preset name ({', '.join(preset_names())}) or YAML path",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=0.001 (repeatable)",
    )
    parser.add_argument("--seed", type=int, help="seed of weights, shuffling and masks")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--output-dir", help="where run folders are written")
    parser.add_argument("--data", help="dataset: mfeat, or a path to an MMSA .pkl or .npz file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicmor",
        description="DiCMoR and baselines for multimodal learning with missing modalities.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    _add_run_options(train)
    train.add_argument("--method", help="registered method (see `dicmor models`)")
    train.add_argument(
        "--missing", help="protocol: none, random:0.3, fixed:text+audio, legacy-batch:0.5"
    )
    train.add_argument(
        "--masks",
        help="train and test on the masks of this masks.npz (another "
        "run's) instead of generating them",
    )
    train.add_argument("--name", help="run folder name (default: time, data, method, protocol)")
    train.add_argument(
        "--restart",
        action="store_true",
        help="start an unfinished run of the same settings over instead of resuming it",
    )
    train.set_defaults(func=cmd_train)

    ev = commands.add_parser(
        "evaluate", help=cmd_evaluate.__doc__, description=cmd_evaluate.__doc__
    )
    ev.add_argument("run", help="a run folder or checkpoint.pt")
    ev.add_argument("--missing", help="protocol (default: the run's own)")
    ev.add_argument("--seed", type=int, help="mask seed (default: the run's seed)")
    ev.add_argument("--masks", help="a masks.npz to use instead of a protocol")
    ev.add_argument(
        "--subsets",
        action="store_true",
        help="evaluate with every non-empty subset of modalities kept, one row each",
    )
    ev.add_argument("--split", default="test", choices=["train", "valid", "test"])
    ev.add_argument(
        "--gaps",
        action="store_true",
        help="also measure the recovered entries against the real ones per modality and class "
        "(MSE, MMD, Fréchet distance; zeros for reference) and write gaps.json",
    )
    ev.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    ev.set_defaults(func=cmd_evaluate)

    pr = commands.add_parser("predict", help=cmd_predict.__doc__, description=cmd_predict.__doc__)
    pr.add_argument("run", help="a run folder or checkpoint.pt")
    pr.add_argument("inputs", help="an .npz of features: {modality}, present/{modality}, id")
    pr.add_argument("--out", default="predictions.csv", help="CSV to write")
    pr.add_argument(
        "--recovered", help="also write the features, recovered entries filled, to this .npz"
    )
    pr.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    pr.add_argument(
        "--fast",
        action="store_true",
        help="run batches as traced graphs, one per missing pattern (built in seconds each; "
        "pays off on large inputs of few patterns)",
    )
    pr.set_defaults(func=cmd_predict)

    for name, func in (("demo", cmd_demo), ("sweep", cmd_sweep)):
        sub = commands.add_parser(name, help=func.__doc__, description=func.__doc__)
        _add_run_options(sub)
        sub.add_argument(
            "--methods", nargs="+", help="methods to compare (default: zero_fill dicmor)"
        )
        sub.add_argument(
            "--rates",
            nargs="+",
            type=float,
            default=[0.0, 0.2, 0.4, 0.6],
            help="random missing rates (default: 0.0 0.2 0.4 0.6)",
        )
        sub.add_argument(
            "--missing",
            nargs="+",
            dest="protocols",
            help="protocols instead of --rates, e.g. "
            "fixed:text fixed:audio+vision legacy-batch:0.5",
        )
        if name == "sweep":
            sub.add_argument(
                "--rerun",
                action="store_true",
                help="train every run again, even those an earlier sweep in the output folder "
                "finished with the same settings, and start unfinished ones over (default: "
                "reuse finished runs, resume unfinished ones)",
            )
            sub.add_argument(
                "--workers",
                type=int,
                help="runs trained at once, each in its own process with its share of the CPU "
                "threads (default 1; with --executor ray: a local Ray instance of this many "
                "runs' CPUs, or on a cluster the most runs in flight)",
            )
            sub.add_argument(
                "--executor",
                choices=["process", "ray"],
                default="process",
                help="where runs train: processes on this machine (default) or Ray tasks on a "
                'local Ray instance or a cluster (pip install "dicmor[ray]")',
            )
            sub.add_argument(
                "--address",
                help="with --executor ray: the Ray cluster to run on (auto, HOST:6379 or "
                "ray://HOST:10001; default $RAY_ADDRESS, else a new local instance)",
            )
            sub.add_argument(
                "--cpus-per-run",
                type=float,
                help="with --executor ray: CPUs each run asks for and uses as threads (default "
                "train.num_threads, else 1)",
            )
            sub.add_argument(
                "--gpus-per-run",
                type=float,
                help="with --executor ray: GPUs each run asks for, fractions allowed (default 1 "
                "when train.device is cuda, else 0)",
            )
            sub.add_argument(
                "--seeds",
                nargs="+",
                type=int,
                help="seeds (default: 1111 1112 1113, or the plan's)",
            )
            sub.add_argument(
                "--plan",
                help="a named plan of methods, protocols and seeds: 'paper' (DiCMoR's "
                "comparison: its five baselines and DiCMoR, legacy-batch and random MR "
                "0.1-0.7, the fixed subsets, seeds 1111-1119); --methods / --missing / --seeds "
                "narrow it",
            )
        sub.set_defaults(func=func)

    plot = commands.add_parser("plot", help=cmd_plot.__doc__, description=cmd_plot.__doc__)
    plot.add_argument(
        "sweep", help="a sweep's output folder (holding summary.json), the file, or (t-SNE) a run"
    )
    plot.add_argument("--metric", help="metric key, e.g. acc2_non0, f1_non0, acc7, mae, acc")
    plot.add_argument("--out", default="sweep.png", help="image to write (.png, .pdf, .svg)")
    plot.add_argument(
        "--kind",
        choices=["metric", "tsne"],
        default="metric",
        help="metric: the metric against the missing rate (default); tsne: real vs recovered "
        "features of a modality, one panel per method (PNG and PDF, default tsne.png)",
    )
    plot.add_argument("--modality", help="t-SNE: the modality (default: the first recovered)")
    plot.add_argument("--protocol", help="t-SNE of a sweep: the protocol (default: its last)")
    plot.set_defaults(func=cmd_plot)

    report = commands.add_parser("report", help=cmd_report.__doc__, description=cmd_report.__doc__)
    report.add_argument("sweep", help="a sweep's output folder")
    report.add_argument("--out", default="report.html", help="HTML file to write")
    report.set_defaults(func=cmd_report)

    table = commands.add_parser("table", help=cmd_table.__doc__, description=cmd_table.__doc__)
    table.add_argument("sweep", help="a sweep's output folder (holding summary.json) or the file")
    table.add_argument("--format", default="text", help="text, markdown, latex or csv")
    table.add_argument(
        "--metrics", nargs="+", help="metric keys to show, e.g. acc2_non0 f1_non0 (default: all)"
    )
    table.add_argument("--out", help="write the table to this file instead of printing it")
    table.add_argument(
        "--layout",
        choices=["rows", "paper"],
        default="rows",
        help="rows: one row per protocol and method, every metric (default); paper: methods x "
        "missing rates (and fixed subsets), Acc-2 / F1 non-0 per cell, as the paper's tables",
    )
    table.set_defaults(func=cmd_table)

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    inspect = data_commands.add_parser(
        "inspect", help=cmd_data_inspect.__doc__, description=cmd_data_inspect.__doc__
    )
    inspect.add_argument("source", help="mfeat, or a path to an MMSA .pkl or .npz file")
    inspect.set_defaults(func=cmd_data_inspect)

    models = commands.add_parser("models", help=cmd_models.__doc__)
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, FileNotFoundError) as error:
        message = " ".join(str(error).split())  # one line, whatever the message holds
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
