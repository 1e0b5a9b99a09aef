"""The ``functrain`` command: train from an mmengine-style config, explain it, plot its
schedules.

::

    functrain train CONFIG [--work-dir DIR] [--resume [PATH]] [--cfg-options k=v ...]
                           [--device cpu|cuda] [--launcher none|pytorch]
    functrain explain CONFIG [--cfg-options k=v ...]
    functrain schedule CONFIG --plot out.png [--cfg-options k=v ...]
    functrain sweep CONFIG [--grid KEY=V1,V2,...]... [--seeds 0,1,2] [--groups]
                           [--work-dir DIR] [--device cpu|cuda] [--explain] [--cfg-options ...]
    functrain export-member WORK_DIR --member I OUT.pth

``train`` mirrors MMDetection's ``tools/train.py``: the work dir defaults to
``work_dirs/<config name>``; ``--resume`` alone resumes from the work dir's last checkpoint,
``--resume PATH`` from that file. Several processes: ``torchrun --nproc_per_node=N -m
functrain.cli train CONFIG --launcher pytorch``. A bad config exits with status 2 and one
line naming the key at fault; so does a checkpoint that cannot be read (``--resume`` then
names the newest other checkpoint of the work dir that loads). A training loss that turns NaN
or infinite stops the run with one line and status 1 (``default_hooks=dict(terminate_on_nan=None)``
turns the check off). Config files are Python and
loading one executes it; checkpoints are loaded with ``weights_only=True`` and never run code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from functrain.checkpoint import CheckpointError

__all__ = ["main"]


def _load(args: argparse.Namespace) -> Any:
    from functrain.config.config_dict import Config

    return Config.fromfile(args.config, args.cfg_options)


def _train(args: argparse.Namespace) -> int:
    from functrain.checkpoint import CheckpointError, find_latest_checkpoint
    from functrain.config.build import build_runner
    from functrain.ranks import is_main_process

    cfg = _load(args)
    work_dir = (
        args.work_dir or cfg.get("work_dir") or str(Path("work_dirs") / Path(args.config).stem)
    )
    resume: bool | str | None = None
    load_from = None
    if args.resume == "auto":
        resume = True
    elif args.resume is not None:
        resume, load_from = args.resume, args.resume
    auto_resume = resume is True and cfg.get("load_from") is None
    pointer = Path(work_dir) / "last_checkpoint"
    if auto_resume and pointer.is_file() and find_latest_checkpoint(work_dir) is None:
        # The pointer names a file that is gone (a work dir copied from another machine, a
        # checkpoint deleted by hand): starting over would be a silent surprise; mmengine fails
        # here too, with a traceback.
        target = pointer.read_text().strip()
        missing = CheckpointError(
            f"--resume: {pointer} names {target!r}, which does not exist (moved or deleted?)",
            target,
        )
        raise _with_fallback(missing, work_dir, resuming=True)
    built = build_runner(
        cfg,
        work_dir=work_dir,
        resume=resume,
        load_from=load_from,
        device=args.device,
        launcher=args.launcher,
        compile=args.compile,
    )
    runner = built.runner
    if auto_resume and not pointer.is_file() and is_main_process():
        # Not an error (a preemptible job restarts with --resume from the start), but a
        # mistyped --work-dir would otherwise silently train from scratch.
        print(
            f"functrain: note: --resume: no checkpoint in {work_dir} yet (no {pointer}); "
            "training from the start",
            file=sys.stderr,
        )
    try:
        state = runner.train()
    except CheckpointError as err:
        raise _with_fallback(err, runner.work_dir, resuming=args.resume is not None) from err
    test = runner.test() if runner.test_loop is not None else {}
    if is_main_process():
        done = (
            f"{state.epoch} epochs / {state.iteration} iterations"
            if runner.train_loop.by_epoch
            else f"{state.iteration} iterations"
        )
        shown = [
            f"{what}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            for what, metrics in (("last validation", runner.last_val_metrics), ("test", test))
            if metrics
        ]
        print(
            f"trained {done}"
            + "".join(f"; {s}" for s in shown)
            + f"\noutputs (logs, checkpoints, plots) in {runner.work_dir}"
        )
    return 0


def _with_fallback(err: CheckpointError, work_dir: Any, *, resuming: bool) -> CheckpointError:
    """``err`` with, when resuming from a file that cannot be read, the newest other
    checkpoint of the work dir (or else of the file's directory) that does load
    (``--resume PATH``), or a note that none does."""
    from functrain.checkpoint import (
        CheckpointError,
        CheckpointMismatchError,
        find_loadable_checkpoint,
    )

    if not resuming or err.path is None or isinstance(err, CheckpointMismatchError):
        return err

    bad = Path(err.path)
    places = list(dict.fromkeys(Path(d) for d in (work_dir, bad.parent) if d is not None))
    other = next(
        (p for d in places if (p := find_loadable_checkpoint(d, exclude=(bad,))) is not None),
        None,
    )
    where = " or ".join(repr(str(d)) for d in places)
    hint = (
        f"; the previous checkpoint {str(other)!r} loads: resume from it with --resume {other}"
        if other is not None
        else f"; no other checkpoint in {where} loads: train without --resume"
    )
    first = str(err).splitlines()[0] if str(err) else ""
    return CheckpointError(first + hint, err.path)


def _explain(args: argparse.Namespace) -> int:
    from functrain.config.explain import explain

    print(explain(_load(args)))
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from functrain.config.build import plan_training
    from functrain.schedules import plot_schedules

    _, train_loop, plan = plan_training(_load(args))
    if not plan.schedules:
        print("the config schedules nothing (constant hyperparameters)")
        return 0
    for name, schedule in sorted(plan.schedules.items()):
        out = Path(args.plot)
        if len(plan.schedules) > 1:
            out = out.with_name(f"{out.stem}_{name}{out.suffix or '.png'}")
        plot_schedules({name: schedule}, train_loop.max_iters, out, title=Path(args.config).name,
                       xlabel="iteration", ylabel=name)  # fmt: skip
        print(f"{name}: {out}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from functrain.sweep import parse_grid_option, parse_seeds, plan_sweep, run_sweep

    cfg = _load(args)
    grid = dict(parse_grid_option(item) for item in args.grid or [])
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    plan = plan_sweep(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg, grid, seeds,
                      groups=args.groups)  # fmt: skip
    if args.explain:
        print(plan.explain())
        return 0
    work_dir = (
        args.work_dir or cfg.get("work_dir") or str(Path("work_dirs") / Path(args.config).stem)
    )
    print(f"sweep: {len(plan.members)} members ({', '.join(plan.varied)})", flush=True)
    result = run_sweep(cfg, plan, work_dir=work_dir, device=args.device,
                       progress=lambda line: print(line, flush=True))  # fmt: skip
    print(result.table())
    print(f"results in {Path(work_dir) / 'results.csv'}, curves in {Path(work_dir) / 'sweep.png'}")
    return 0


def _export_member(args: argparse.Namespace) -> int:
    from functrain.sweep import export_member

    out = export_member(args.work_dir, args.member, args.out)
    print(f"member {args.member} written to {out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="functrain", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="a Python config file (executed when loaded)")
        p.add_argument(
            "--cfg-options",
            nargs="+",
            metavar="KEY=VALUE",
            help="override config keys, e.g. optim_wrapper.optimizer.lr=0.01",
        )

    train = sub.add_parser("train", help="train from a config")
    common(train)
    train.add_argument("--work-dir", help="default: work_dirs/<config name>")
    train.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="PATH",
        help="resume from PATH, or (no PATH) from the work dir's last checkpoint",
    )
    train.add_argument("--device", choices=("cpu", "cuda"), default=None)
    train.add_argument("--launcher", choices=("none", "pytorch"), default=None)
    train.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=None,
        metavar="MODE",
        help="compile the train step (forward, backward, update) as one program with "
        "torch.compile; MODE: a torch.compile mode, e.g. reduce-overhead (CUDA graphs on CUDA). "
        "Overrides the config's compile key",
    )
    train.set_defaults(run=_train)

    exp = sub.add_parser("explain", help="print the transform chain, lr/decay table, schedules")
    common(exp)
    exp.set_defaults(run=_explain)

    sched = sub.add_parser("schedule", help="plot the configured schedules")
    common(sched)
    sched.add_argument("--plot", required=True, metavar="OUT.png")
    sched.set_defaults(run=_schedule)

    sweep = sub.add_parser(
        "sweep", help="train a grid of hyperparameters x seeds as one stacked ensemble"
    )
    common(sweep)
    sweep.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2,...",
        help="values of a config key, e.g. optim_wrapper.optimizer.lr=1e-3,1e-2 (repeatable; "
        "added to the config's sweep=dict(grid=...))",
    )
    sweep.add_argument("--seeds", metavar="0,1,2", help="seeds of the members' models (or 0-7)")
    sweep.add_argument(
        "--groups",
        action="store_true",
        help="allow keys that cannot vary inside one ensemble (model, optimizer type, batch "
        "size, ...): members with equal values of them train together, groups one by one",
    )
    sweep.add_argument("--work-dir", help="default: work_dirs/<config name>")
    sweep.add_argument("--device", choices=("cpu", "cuda"), default=None)
    sweep.add_argument(
        "--explain", action="store_true", help="print the member table, train nothing"
    )
    sweep.set_defaults(run=_sweep)

    export = sub.add_parser(
        "export-member", help="write one member of a sweep as an ordinary checkpoint"
    )
    export.add_argument("work_dir", metavar="WORK_DIR", help="the sweep's work dir")
    export.add_argument("--member", type=int, required=True, help="the member's row")
    export.add_argument("out", metavar="OUT.pth")
    export.set_defaults(run=_export_member)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a bad config or a checkpoint
    that cannot be loaded, 1 for a training loss that became non-finite; one line on stderr)."""
    from functrain.callbacks import NonFiniteLossError
    from functrain.checkpoint import CheckpointError
    from functrain.config.errors import ConfigError, ConfigFileError

    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (ConfigError, ConfigFileError, CheckpointError, FileNotFoundError, SyntaxError) as err:
        print(f"functrain: error: {err}".splitlines()[0], file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        # The run itself failed (not its input): one line, status 1, nothing saved after it.
        print(f"functrain: {err}".splitlines()[0], file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
