"""The live progress display of a search (rich)."""
from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table


class Display:
    def __init__(self, search, console: Console, enabled: bool = True):
        self.search = search
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.live = None
        self.start = time.monotonic()
        self.last_print = 0.0

    def __enter__(self):
        if self.enabled:
            self.live = Live(self.render(), console=self.console, refresh_per_second=4,
                             transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)

    def render(self) -> Table:
        s, c = self.search, self.search.counts
        done = c.accepted + c.rejected + c.reused + c.pruned + c.failed
        table = Table(show_header=False, box=None, padding=(0, 1))
        table.add_row("trials", f"{done}/{s.trials}  ({time.monotonic() - self.start:.0f} s)")
        table.add_row("evaluated", f"{c.accepted}   reused {c.reused}   pruned {c.pruned}   "
                                   f"failed {c.failed}")
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(c.reasons.items()) if k != "proxy")
        table.add_row("rejected", f"{c.rejected}" + (f"  ({reasons})" if reasons else ""))
        if c.best is not None:
            table.add_row("best", f"[bold green]{c.best:.5g}[/bold green] {s.space.metric} "
                                  f"(trial {c.best_trial})")
            table.add_row("", escape(c.best_formula[:160]))
        return table

    def update(self, search, trial) -> None:
        if self.live is not None:
            self.live.update(self.render())
        elif time.monotonic() - self.last_print > 30:  # a plain line now and then (logs, CI)
            c = search.counts
            self.console.print(f"trial {trial.number}: best {c.best} ({c.accepted} evaluated, "
                               f"{c.rejected} rejected)")
            self.last_print = time.monotonic()
