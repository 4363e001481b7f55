"""The ``autoloss`` command line.

    autoloss zoo list              every survey section and the losses it holds so far
    autoloss zoo show ID           formula, LaTeX, paper, defaults and generated torch source
    autoloss zoo table             the zoo as a markdown table (the README's)
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from . import catalog
from .errors import AutolossError


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
    lines = ["| id | section | signature | loss | paper | defaults |",
             "| --- | --- | --- | --- | --- | --- |"]
    for sec in cat.sections:
        for sub in sec.subsections:
            for spec in sorted((s for s in cat.losses.values() if s.section == sub.id),
                               key=lambda s: s.id):
                defaults = ", ".join(f"{k}={v:g}" for k, v in spec.defaults.items()
                                     if k != "eps")
                paper = spec.paper.replace("|", "/")
                lines.append(f"| `{spec.id}` | {sub.id} | `{spec.signature}` | {spec.title} | "
                             f"{paper} | {defaults} |")
    return "\n".join(lines)


def zoo_show(args) -> int:
    from . import zoo
    from .signatures import get as get_signature
    spec = catalog.get(args.id)
    compiled = zoo.compiled(spec.id)
    cat = catalog.default()
    sec, sub = cat.section_of(spec)
    sig = get_signature(spec.signature)
    con = _console()
    con.print(f"[bold green]{spec.id}[/bold green] — [bold]{escape(spec.title)}[/bold]")
    con.print(f"paper:      {escape(spec.paper)}")
    con.print(f"section:    {sub.id} {escape(sub.title)} ({sec.id}. {escape(sec.title)})")
    inputs = ", ".join(f"{i.name} {i.shape}" for i in sig.inputs)
    con.print(f"signature:  {sig.name}: ({inputs}) -> {sig.output}")
    con.print(f"properties: {', '.join(spec.properties) or '-'}")
    if spec.reference:
        con.print(f"reference:  {escape(spec.reference)}")
    con.print(f"hash:       {compiled.hash}")
    con.print()
    con.print(Panel(escape(spec.formula()), title="formula", title_align="left"))
    con.print(Panel(escape(spec.latex()), title="LaTeX", title_align="left"))
    table = Table(title="parameters", title_justify="left")
    for col in ("name", "default", "search range"):
        table.add_column(col)
    for p in compiled.params.values():
        rng = f"[{p.low:g}, {p.high:g}]" + (" log" if p.log else "") if p.low is not None else "-"
        table.add_row(p.name, f"{p.default:g}", rng)
    con.print(table)
    if spec.notes:
        con.print(f"\nnotes: {escape(spec.notes)}")
    con.print("\n[bold]generated torch source[/bold] (value, then fused value and gradient):")
    con.print(Syntax(compiled.source, "python", theme="ansi_dark", word_wrap=True))
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
