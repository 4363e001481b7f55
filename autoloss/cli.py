"""The ``autoloss`` command line.

    autoloss zoo list              every survey section and the losses it holds so far
    autoloss zoo show ID           formula, LaTeX, paper, defaults and generated torch source
    autoloss zoo table             the zoo as a markdown table (the README's)
    autoloss eval --proxy P --loss SLOT=LOSS [--seeds N] [--json]   score losses on a proxy
    autoloss export (RUN | --zoo ID | --expr E --signature S) [-o F] [--name N] [--check]
    autoloss search SPACE [--trials N] [--timeout S] [--strategy S] [--resume]   search losses
           [--storage journal|URL] [--workers N] [--backend ray [--address A] ...]
    autoloss worker RUN [--storage URL]   join a search's trials from another process/machine
    autoloss report RUN            report.md, plots and the exported best loss of a run
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from . import catalog
from .errors import AutolossError
from .signatures import SIGNATURES


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


# ----------------------------------------------------------------------------------- zoo
def zoo_list(args) -> int:
    cat = catalog.default()
    con = _console()
    total = len(cat.losses)
    con.print(f"[bold]autoloss zoo[/bold]: {total} losses in {len(cat.sections)} survey sections "
              "(Loss Functions for Object Detection: An Overview)\n")
    by_sub: dict[str, list] = {}
    for spec in cat.losses.values():
        by_sub.setdefault(spec.section, []).append(spec)
    for sec in cat.sections:
        count = sum(len(by_sub.get(s.id, [])) for s in sec.subsections)
        con.print(f"[bold cyan]{sec.id}. {escape(sec.title)}[/bold cyan]  ({count} losses, "
                  f"{sec.file})")
        for sub in sec.subsections:
            specs = sorted(by_sub.get(sub.id, []), key=lambda s: s.id)
            if sub.id != sec.id:
                con.print(f"  [bold]{sub.id} {escape(sub.title)}[/bold]")
            if not specs:
                con.print("    [dim](none yet)[/dim]")
                continue
            table = Table(show_header=False, box=None, pad_edge=False, padding=(0, 2))
            table.add_column("id", style="green", no_wrap=True)
            table.add_column("signature", style="magenta", no_wrap=True)
            table.add_column("title")
            table.add_column("defaults", style="dim")
            for spec in specs:
                defaults = ", ".join(f"{k}={v:g}" for k, v in spec.defaults.items()
                                     if k != "eps")
                table.add_row("    " + spec.id, spec.signature, escape(spec.title), defaults)
            con.print(table)
        con.print()
    return 0


def zoo_table(args) -> int:
    """The README's zoo table (markdown), generated from the catalog."""
    print(markdown_table())
    return 0


def markdown_table() -> str:
    cat = catalog.default()
    lines = ["| id | section | kind | signature | loss | paper | defaults | "
             "scale/shift invariant |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for sec in cat.sections:
        for sub in sec.subsections:
            for spec in sorted((s for s in cat.losses.values() if s.section == sub.id),
                               key=lambda s: s.id):
                defaults = ", ".join(f"{k}={v:g}" for k, v in spec.defaults.items()
                                     if k != "eps")
                paper = spec.paper.replace("|", "/")
                lines.append(f"| `{spec.id}` | {sub.id} | {spec.kind} | `{spec.signature}` | "
                             f"{spec.title} | "
                             f"{paper} | {defaults} | {_invariance(spec)} |")
    return "\n".join(lines)


def _invariance(spec) -> str:
    """'yes', 'no: why' or '' (the signature's inputs have no units)."""
    if spec.invariant is None:
        return ""
    return "yes" if spec.invariant else f"no: {spec.not_invariant.replace('|', '/')}"


def zoo_show(args) -> int:
    from . import zoo
    from .signatures import get as get_signature
    spec = catalog.get(args.id)
    # a hand-written entry (a set-level function, a stateful or sampling module) has no
    # generated source: its metadata, parameters and implementation are shown instead
    compiled = zoo.compiled(spec.id) if spec.compiles else None
    cat = catalog.default()
    sec, sub = cat.section_of(spec)
    sig = get_signature(spec.signature)
    con = _console()
    con.print(f"[bold green]{spec.id}[/bold green] — [bold]{escape(spec.title)}[/bold]")
    con.print(f"paper:      {escape(spec.paper)}")
    con.print(f"section:    {sub.id} {escape(sub.title)} ({sec.id}. {escape(sec.title)})")
    inputs = ", ".join(f"{i.name} {i.shape}" for i in sig.inputs)
    con.print(f"signature:  {sig.name}: ({inputs}) -> {sig.output}")
    con.print(f"kind:       {spec.kind} ({catalog.KINDS[spec.kind]})")
    con.print(f"properties: {', '.join(spec.properties) or '-'}")
    if spec.kind != "S":
        con.print(f"normalised: the sum / {catalog.NORMALISERS[spec.normaliser]}, in a detector")
    if spec.invariant is not None:
        con.print(f"invariant:  {escape(_invariance(spec))} (to scaling and shifting the image)")
    if spec.reference:
        con.print(f"reference:  {escape(spec.reference)}")
    if compiled is not None:
        con.print(f"hash:       {compiled.hash}")
    else:
        con.print(f"implementation: {spec.implementation} (hand-written)")
    con.print()
    con.print(Panel(escape(spec.formula()), title="formula", title_align="left"))
    if compiled is not None:
        con.print(Panel(escape(spec.latex()), title="LaTeX", title_align="left"))
    table = Table(title="parameters", title_justify="left")
    for col in ("name", "default", "search range"):
        table.add_column(col)
    for p in (compiled.params if compiled is not None else spec.params).values():
        rng = f"[{p.low:g}, {p.high:g}]" + (" log" if p.log else "") if p.low is not None else "-"
        table.add_row(p.name, f"{p.default:g}", rng)
    con.print(table)
    if spec.notes:
        con.print(f"\nnotes: {escape(spec.notes)}")
    if compiled is None:
        return 0
    con.print("\n[bold]generated torch source[/bold] (value, then fused value and gradient):")
    con.print(Syntax(compiled.source, "python", theme="ansi_dark", word_wrap=True))
    return 0


# --------------------------------------------------------------------------------- eval
def parse_options(pairs) -> dict:
    out = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise AutolossError(f"--option takes key=value, got {item!r}")
        for conv in (int, float):
            try:
                value = conv(value)
                break
            except ValueError:
                continue
        else:
            value = {"true": True, "false": False}.get(value.lower(), value)
        out[key.strip()] = value
    return out


def eval_cmd(args) -> int:
    import json

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .evaluate import evaluate
    from .proxies import CandidateFailure

    losses = {}
    for item in args.loss:
        slot, sep, value = item.partition("=")
        if not sep:
            raise AutolossError(f"--loss takes slot=loss (e.g. reg=giou or reg='1 - iou'), "
                                f"got {item!r}")
        losses[slot.strip()] = value
    kwargs = dict(seeds=args.seeds, budget=args.budget, scale=args.scale, threads=args.threads,
                  options=parse_options(args.option))
    try:
        if args.json:
            result = evaluate(args.proxy, losses, **kwargs)
            print(json.dumps(result.as_dict(), indent=2))
            return 0
        con = _console()
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                      console=con, transient=True) as bar:
            task = bar.add_task(f"{args.proxy}: {', '.join(f'{k}={v}' for k, v in losses.items())}",
                                total=1.0)
            result = evaluate(args.proxy, losses, **kwargs,
                              progress=lambda done, total: bar.update(task, completed=done / total))
    except CandidateFailure as err:
        print(f"autoloss: the loss failed on the proxy: {err.reason}", file=sys.stderr)
        return 1
    arrow = "higher is better" if result.direction == "maximize" else "lower is better"
    con.print(f"[bold]{result.proxy}[/bold] {result.metric} ({arrow}): "
              f"[bold green]{result.mean:.4f} ± {result.std:.4f}[/bold green] over "
              f"{len(result.values)} seed(s)")
    con.print("  per seed: " + ", ".join(f"{v:.4f}" for v in result.values)
              + f"   ({sum(result.seconds):.1f} s)")
    for key, values in result.extra.items():
        con.print(f"  {key}: " + ", ".join(f"{v:.4g}" for v in values))
    return 0


# ------------------------------------------------------------------------------- search
def search_cmd(args) -> int:
    ray = None
    if args.backend == "ray":
        from .search.ray_backend import RaySettings

        given = dict(address=args.address, max_concurrent=args.max_concurrent,
                     cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                     scheduler=args.scheduler, max_failures=args.max_failures)
        ray = RaySettings(**{k: v for k, v in given.items() if v is not None})
    elif any(v is not None for v in (args.address, args.max_concurrent, args.cpus_per_trial,
                                     args.gpus_per_trial, args.scheduler, args.max_failures)):
        raise AutolossError("--address, --max-concurrent, --cpus-per-trial, --gpus-per-trial, "
                            "--scheduler and --max-failures need --backend ray")
    if ray is None or not ray.address:
        return _search(args, ray)
    # connected before a run folder is made for it: a cluster that is not there, or that
    # refuses this driver, leaves no half-made run behind to be resumed
    from .search.ray_backend import connect

    connected = connect(ray.address)
    try:
        return _search(args, ray)
    finally:
        if connected:
            import ray as ray_lib

            ray_lib.shutdown()


def _search(args, ray) -> int:
    from .search.engine import Search
    from .search.progress import Display

    search = Search.create(args.space, runs_dir=args.runs_dir, name=args.name,
                           resume=args.resume, strategy=args.strategy, seed=args.seed,
                           trials=args.trials, timeout=args.timeout, threads=args.threads,
                           validate=not args.no_validate, storage=args.storage,
                           workers=args.workers, ray=ray)
    con = _console()
    con.print(f"[bold]autoloss search[/bold] {search.space.name}: {search.strategy_name}, "
              f"{search.trials} trials on {search.space.proxy} ({search.space.metric}, "
              f"{search.space.direction}) -> {search.folder}")
    with Display(search, con, enabled=not args.quiet) as display:
        search.on_trial = display.update
        search.on_message = lambda text: con.print(text, markup=False, soft_wrap=True)
        summary = search.run()
    if summary.get("interrupted"):
        con.print(f"[yellow]interrupted[/yellow]: finished trials are kept; continue with\n"
                  f"  autoloss search {args.space} --resume --name {search.folder.name}"
                  f" --runs-dir {args.runs_dir}")
        return 130
    from .search.report import print_summary, write_report
    from .search.summary import exported_note

    print_summary(summary, con)
    if not args.no_report:
        path = write_report(search.folder)
        con.print(f"report: {path}", markup=False)
        best = search.folder / "best_loss.py"
        if best.exists():
            con.print(f"best loss: {best} holds {exported_note(summary)}", markup=False,
                      soft_wrap=True)
    transfer = summary.get("transfer")
    if transfer:  # the last line: does the search's winner hold up in the transfer proxy?
        word = "[bold green]yes[/bold green]" if transfer["winner"] else "[bold red]no[/bold red]"
        con.print(f"transfer to {transfer['proxy']}: {word}: {escape(transfer['verdict'])}",
                  soft_wrap=True)
    return 0


def worker_cmd(args) -> int:
    from .search.engine import join
    from .search.runs import Run

    run = Run.find(args.run, args.runs_dir)
    pid = os.getpid()

    def line(loop, frozen):
        if not args.quiet:
            value = f" {frozen.values[0]:.5g}" if frozen.values else ""
            print(f"worker {pid}: trial {frozen.number} {frozen.state.name.lower()}{value} "
                  f"({loop.counts.finished}/{loop.trials} finished)", flush=True)

    print(f"worker {pid} joins {run.folder} ({run.storage_url.split('://')[0]})", flush=True)
    loop = join(run, storage=args.storage, threads=args.threads, trials=args.trials,
                timeout=args.timeout, on_trial=line)
    print(f"worker {pid}: ran {loop.timing['trials']} trials; the run has "
          f"{loop.counts.finished} finished" + (" (interrupted)" if loop.interrupted else ""),
          flush=True)
    return 130 if loop.interrupted else 0


def report_cmd(args) -> int:
    from .search.report import write_report
    from .search.runs import Run

    path = write_report(Run.find(args.run, args.runs_dir), export=not args.no_export)
    print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------- export
def export_cmd(args) -> int:
    from . import export, zoo
    from .evaluate import resolve_loss

    params = parse_options(args.param)
    if args.zoo:
        compiled = zoo.compiled(args.zoo)
        prov = export.zoo_provenance(args.zoo)
        default_name = "".join(w.title() for w in args.zoo.split("_")) + "Loss"
    elif args.expr:
        if not args.signature:
            raise AutolossError(f"--expr needs --signature ({', '.join(SIGNATURES)})")
        compiled = resolve_loss(f"{args.signature}:{args.expr}", (args.signature,), "custom",
                                params=params)
        prov = export.Provenance(source="hand-written expression", formula=args.expr)
        default_name = "CustomLoss"
    elif args.run:
        from .search.runs import Run, export_run

        run = Run.find(args.run, args.runs_dir)
        path = export_run(run, trial=args.trial, best=args.best, output=args.output,
                          name=args.name, trainable=args.trainable_constants, check=args.check)
        print(f"wrote {path}" + (f" (trial {args.trial})" if args.trial is not None else
                                 f": {run.exported_note()}"))
        return 0
    else:
        raise AutolossError("say what to export: RUN, --zoo ID, or --expr EXPR --signature SIG")
    name = args.name or default_name
    out = args.output or f"{export.function_name(name)}.py"
    path = export.to_file(compiled, out, name, params=params,
                          trainable_constants=args.trainable_constants, provenance=prov)
    print(f"wrote {path} ({name}, function {export.function_name(name)})")
    if args.check:
        print(export.describe(export.check(path, compiled, {k: v for k, v in params.items()})))
    return 0


# ---------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoloss",
        description="Automated loss-function search for object detection.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    zoo = sub.add_parser("zoo", help="the surveyed losses")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="ACTION")
    zsub.required = True
    zl = zsub.add_parser("list", help="list the losses by survey section")
    zl.set_defaults(func=zoo_list)
    zt = zsub.add_parser("table", help="the zoo as a markdown table (README)")
    zt.set_defaults(func=zoo_table)
    zs = zsub.add_parser("show", help="show one loss: formula, LaTeX, defaults, torch source")
    zs.add_argument("id", help="zoo id, e.g. giou")
    zs.set_defaults(func=zoo_show)

    ev = sub.add_parser("eval", help="score losses on a proxy task over several seeds")
    ev.add_argument("--proxy", required=True,
                    help="boxsim, clssim, clssim_quality, digits, or module:function")
    ev.add_argument("--loss", action="append", required=True, metavar="SLOT=LOSS",
                    help="a zoo id or an expression per slot, e.g. cls=focal reg='1 - iou'")
    ev.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    ev.add_argument("--budget", type=int, help="override the proxy's default budget")
    ev.add_argument("--scale", type=float, help="override the proxy's default scale")
    ev.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ev.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="proxy option, e.g. cls_target=iou for digits")
    ev.add_argument("--json", action="store_true", help="print the per-seed metrics as JSON")
    ev.set_defaults(func=eval_cmd)

    se = sub.add_parser("search", help="search losses (Optuna, SQLite storage under runs/)")
    from .search import space as spaces

    se.add_argument("space", help=f"a search space: {', '.join(spaces.names())}, or a .toml "
                                  "path")
    se.add_argument("--trials", type=int, help="number of trials (default: the space's)")
    se.add_argument("--timeout", type=float, help="stop after this many seconds")
    se.add_argument("--strategy", choices=("random", "tpe", "evolution", "evolution-scratch",
                                           "nsga2"), help="default: the space's")
    se.add_argument("--seed", type=int, help="search seed (default: the space's)")
    se.add_argument("--name", help="run name (default: <space>-<date>-<time>)")
    se.add_argument("--runs-dir", default="runs", help="where runs live (default: runs)")
    se.add_argument("--resume", action="store_true",
                    help="continue the named run (default: the latest run of the space)")
    se.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    se.add_argument("--no-validate", action="store_true", help="skip the validation stage")
    se.add_argument("--no-report", action="store_true", help="skip report.md and the plots")
    se.add_argument("--quiet", action="store_true", help="no live progress display")
    se.add_argument("--storage", metavar="URL",
                    help="where the trials live: sqlite (default, study.db, one process), "
                         "journal (journal.log: workers on one machine or a shared "
                         "filesystem) or a database URL, e.g. postgresql+psycopg2://USER@HOST/DB")
    se.add_argument("--workers", type=int, default=1,
                    help="processes on this machine working on the run (needs --storage "
                         "journal or a database; more join with autoloss worker RUN)")
    ray = se.add_argument_group("Ray Tune backend (--backend ray)")
    ray.add_argument("--backend", choices=("local", "ray"), default="local",
                     help="where trials run: this process (local, default) or a Ray cluster")
    ray.add_argument("--address", help="the Ray cluster, e.g. 127.0.0.1:6379 (default: start "
                                       "a local Ray)")
    ray.add_argument("--max-concurrent", type=int, help="trials at once (default: the "
                                                        "cluster's CPUs / --cpus-per-trial)")
    ray.add_argument("--cpus-per-trial", type=float, help="CPUs a trial asks (default 1; also "
                                                          "its torch threads)")
    ray.add_argument("--gpus-per-trial", type=float, help="GPUs a trial asks (default 0)")
    ray.add_argument("--scheduler", choices=("asha", "median", "none"),
                     help="early stopping from intermediate reports (default asha)")
    ray.add_argument("--max-failures", type=int,
                     help="retries of a trial whose worker died (default 2)")
    se.set_defaults(func=search_cmd)

    wk = sub.add_parser("worker", help="join a running search's trials (journal or database "
                                       "storage) from another process or machine")
    wk.add_argument("run", help="run folder or name")
    wk.add_argument("--runs-dir", default="runs")
    wk.add_argument("--storage", metavar="URL", help="the run's storage, when it is reached "
                                                     "differently from here (default: the run's)")
    wk.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    wk.add_argument("--trials", type=int, help="the run's trial budget (default: the run's)")
    wk.add_argument("--timeout", type=float, help="stop after this many seconds")
    wk.add_argument("--quiet", action="store_true", help="no line per trial")
    wk.set_defaults(func=worker_cmd)

    rp = sub.add_parser("report", help="write report.md and plots of a run, export its best")
    rp.add_argument("run", help="run folder or name")
    rp.add_argument("--runs-dir", default="runs")
    rp.add_argument("--no-export", action="store_true", help="do not export the best loss")
    rp.set_defaults(func=report_cmd)

    ex = sub.add_parser("export", help="write a loss as a standalone PyTorch module")
    ex.add_argument("run", nargs="?", help="a run folder (runs/<name>) to export from")
    ex.add_argument("--trial", type=int, help="the trial number to export (default: best)")
    ex.add_argument("--best", action="store_true",
                    help="export the run's best: the best candidate that holds up in the "
                         "transfer proxy, or the baseline's loss when none does (the default)")
    ex.add_argument("--zoo", metavar="ID", help="export a zoo loss")
    ex.add_argument("--expr", help="export a hand-written expression (with --signature)")
    ex.add_argument("--signature", help="signature of --expr: " + ", ".join(SIGNATURES))
    ex.add_argument("-o", "--output", help="file to write (default: <name>.py)")
    ex.add_argument("--name", help="class name, e.g. MyLoss (the function is my_loss)")
    ex.add_argument("--param", action="append", metavar="KEY=VALUE", help="a parameter value")
    ex.add_argument("--trainable-constants", action="store_true",
                    help="ship the loss's parameters as nn.Parameter")
    ex.add_argument("--check", action="store_true",
                    help="import the file in a fresh process and compare with the compiled loss")
    ex.add_argument("--runs-dir", default="runs", help="where runs live (for RUN)")
    ex.set_defaults(func=export_cmd)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AutolossError as err:
        print(f"autoloss: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoloss: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
