"""Run folders: ``runs/<name>/`` with the resolved config, the Optuna storage and outputs.

::

    runs/box-regression-20261126-101500/
        config.json        the resolved search space and the command's options
        study.db           Optuna storage (SQLite): the source of truth for trials
                           (journal.log with --storage journal; a PostgreSQL URL keeps them
                           in that database, under the run's name)
        summary.json       machine-readable summary (written as the search goes and at its end)
        report.md, *.png   ``autoloss report``
        best_loss.py       the exported best loss (with a transfer stage: the best candidate
                           that holds up in the transfer proxy, else the baseline's loss)
        .lock              the PID of the process running the search

:class:`Run` reads a run (finished or running) without building a proxy or a strategy;
``autoloss report``, ``autoloss export`` (:func:`export_run`) and ``--resume`` use it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from optuna.trial import FrozenTrial, TrialState

from .. import catalog, export
from ..errors import AutolossError
from .candidate import Candidate
from .optuna_backend import load_study, storage, study_name
from .space import Space, parse_space
from .summary import exported_note, mean_std, ranked

__all__ = ["Run", "RunError", "Lock", "export_run", "storage", "resolve", "new_name",
           "read_json", "write_json"]


class RunError(AutolossError):
    """A run folder that cannot be used as asked."""


def new_name(space: str) -> str:
    return f"{space}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def latest(runs_dir: Path, space: str) -> Optional[Path]:
    found = sorted((p for p in runs_dir.glob(f"{space}-*") if (p / "config.json").exists()),
                   key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve(run: str | os.PathLike, runs_dir: str | os.PathLike = "runs") -> Path:
    """A run folder from its path or its name under ``runs_dir``."""
    path = Path(run)
    for candidate in (path, Path(runs_dir) / path):
        if (candidate / "config.json").exists():
            return candidate
    raise RunError(f"{run}: not a run folder (no config.json); runs are under "
                   f"{Path(runs_dir).resolve()}")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    tmp.replace(path)  # atomic: a kill never leaves half a summary


def _jsonable(x):
    if isinstance(x, float):
        return None
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """One process per run: the PID in ``.lock``; a dead owner's lock is taken over."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"

    def owner(self) -> Optional[int]:
        try:
            pid = int(self.path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid != os.getpid() and _alive(pid) else None

    def __enter__(self):
        pid = self.owner()
        if pid is not None:
            raise RunError(f"{self.path.parent}: another search (PID {pid}) is running it")
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc):
        try:
            if self.path.read_text().strip() == str(os.getpid()):
                self.path.unlink()
        except FileNotFoundError:
            pass


class Run:
    """A run folder, read: its config and space, its study and trials, the candidates they
    hold, their ranking, the best trial, the validation and transfer results and the summary.

    Reading builds no proxy and no strategy; the trials come from the Optuna storage (read
    fresh each time, so a running search's progress shows), the JSON files are read once.
    ``space`` stands in for the config's (the engine passes the one it searches).

    >>> run = Run.find("box-regression-20261126-101500")          # doctest: +SKIP
    >>> best = run.best_trial(); run.candidate_of(best).formula()
    >>> run.export()                                              # runs/<run>/best_loss.py
    """

    def __init__(self, folder: str | os.PathLike, space: Optional[Space] = None):
        self.folder = Path(folder)
        if space is None and not (self.folder / "config.json").exists():
            raise RunError(f"{self.folder}: not a run folder (no config.json)")
        self._space = space
        self._candidates: dict[int, Optional[Candidate]] = {}

    # -- finding runs ------------------------------------------------------------------------
    @classmethod
    def find(cls, run: str | os.PathLike, runs_dir: str | os.PathLike = "runs") -> "Run":
        """A run from its folder or its name under ``runs_dir``."""
        return cls(resolve(run, runs_dir))

    @classmethod
    def to_resume(cls, runs_dir: str | os.PathLike, space: str,
                  name: Optional[str] = None) -> "Run":
        """The run named ``name`` under ``runs_dir``, else the latest run of ``space``."""
        runs_dir = Path(runs_dir)
        folder = runs_dir / name if name else latest(runs_dir, space)
        if folder is None or not (folder / "config.json").exists():
            raise RunError(f"nothing to resume: no run of {space!r} under {runs_dir}"
                           + (f" named {name!r}" if name else ""))
        return cls(folder)

    @classmethod
    def create(cls, folder: Path, space: Space, options: dict[str, Any]) -> "Run":
        """Write a new run's ``config.json`` (the resolved space and the options)."""
        write_json(folder / "config.json", {
            "space_name": space.name, "space_file": space.file, "space": space.raw,
            "options": options, "created": datetime.now().isoformat(timespec="seconds"),
            "autoloss": __import__("autoloss").__version__})
        return cls(folder, space)

    # -- the folder ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.folder.name

    @functools.cached_property
    def config(self) -> dict:
        return read_json(self.folder / "config.json")

    @property
    def options(self) -> dict[str, Any]:
        """The search's options: strategy, seed, trials, timeout, threads."""
        return self.config["options"]

    @property
    def storage_url(self) -> str:
        """Where the trials are: ``sqlite`` (study.db), ``journal`` (journal.log) or a URL."""
        return self.options.get("storage") or "sqlite"

    @property
    def backend(self) -> str:
        """``local`` (this machine's processes) or ``ray`` (Tune trials on a cluster)."""
        return self.options.get("backend") or "local"

    @property
    def study_name(self) -> str:
        return study_name(self.storage_url, self.name)

    @property
    def strategy(self) -> str:
        return self.options["strategy"]

    @property
    def seed(self) -> int:
        return self.options["seed"]

    @functools.cached_property
    def space(self) -> Space:
        if self._space is not None:
            return self._space
        c = self.config
        return parse_space(c["space"], c["space_name"], c["space_file"])

    @property
    def signatures(self) -> dict[str, str]:
        return {s: slot.signature for s, slot in self.space.slots.items()}

    @functools.cached_property
    def summary(self) -> dict:
        return read_json(self.folder / "summary.json")

    @property
    def validation(self) -> Optional[dict]:
        return self.summary.get("validation")

    @property
    def transfer(self) -> Optional[dict]:
        return self.summary.get("transfer")

    def exported_note(self) -> str:
        """What ``best_loss.py`` holds, in a few words."""
        return exported_note(self.summary)

    # -- trials ------------------------------------------------------------------------------
    @functools.cached_property
    def study(self):
        """The run's Optuna study (to read: no sampler or pruner of the search's)."""
        return load_study(self.folder, self.storage_url, self.study_name)

    def trials(self) -> list[FrozenTrial]:
        """Every trial in number order (trial ``n`` is ``trials()[n]``)."""
        return self.study.get_trials(deepcopy=False)

    def complete(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def trial(self, number: int, complete: bool = False) -> FrozenTrial:
        """Trial ``number``; ``complete``: it must have completed (one to export)."""
        trials = self.trials()
        if not 0 <= number < len(trials):
            raise RunError(f"{self.folder}: no trial {number}; the run has trials 0 to "
                           f"{len(trials) - 1}")
        t = trials[number]
        if complete and t.state != TrialState.COMPLETE:
            raise RunError(f"{self.folder}: trial {number} did not complete ({t.state.name})")
        return t

    def candidate_of(self, trial: FrozenTrial) -> Optional[Candidate]:
        """The candidate a trial evaluated (None: the trial died before it had one)."""
        if trial.number not in self._candidates:
            attrs = trial.user_attrs.get("candidate")
            self._candidates[trial.number] = (None if attrs is None else
                                              Candidate.from_attrs(attrs, self.signatures))
        return self._candidates[trial.number]

    def ranked(self) -> list[FrozenTrial]:
        """Complete trials evaluated on the proxy (not reused), best first, one per key."""
        return ranked(self.trials(), self.space.direction)

    def best_trial(self) -> Optional[FrozenTrial]:
        """The transfer winner when there is one, else the validated best when there is a
        validation, else the best evaluated trial."""
        winner = (self.transfer or {}).get("winner")
        if winner is not None:
            return self.trial(winner["trial"])
        rows = [r for r in (self.validation or {}).get("rows", [])
                if "mean" in r and r.get("trial") is not None]
        if rows:
            pick = (min if self.space.direction == "minimize" else max)(
                rows, key=lambda r: r["mean"])
            return self.trial(pick["trial"])
        best = self.ranked()
        return best[0] if best else None

    # -- export --------------------------------------------------------------------------------
    def export(self, trial: Optional[int] = None, output: Optional[str | os.PathLike] = None,
               name: Optional[str] = None, trainable: bool = False,
               check: bool = False) -> Path:
        """Write trial ``trial``, or the run's best (the best candidate that holds up in the
        transfer proxy; the baseline's loss when none does), as a standalone module:
        ``best_loss.py`` in the folder unless ``output`` says otherwise. ``check`` imports
        it in a fresh process and prints how it compares with the compiled loss."""
        space, transfer = self.space, self.transfer
        if trial is None and transfer and transfer.get("winner") is None:
            return self._export_baseline(output, name, trainable, check)
        if trial is None:
            t = self.best_trial()
            if t is None:
                raise RunError(f"{self.folder}: no evaluated trial to export")
        else:
            t = self.trial(trial, complete=True)
        cand = self.candidate_of(t)
        extra = {"origin": cand.origin, "strategy": self.strategy}
        if transfer:
            row = next((r for r in transfer["rows"] if r["trial"] == t.number), None)
            extra["transfer"] = _transfer_text(transfer, row)
            if trial is not None and row is not None and row.get("weight") is not None:
                extra["weight"] = (f"exported as searched, unweighted; the transfer proxy "
                                   f"scored it at weight {row['weight']:g} (--best exports "
                                   "that)")
            if trial is None and row is not None and row.get("weight") is not None:
                # the scale it transferred at: the baseline's pull (the search proxy ignores
                # scale)
                cand = cand.scaled(transfer["settings"]["searched_slot"], row["weight"])
                st = transfer["settings"]
                extra["weight"] = (f"scaled by {row['weight']:g} to the pull of "
                                   f"{st['baseline'][st['slot']]} near the target, as scored "
                                   "in the transfer proxy")
        prov = export.Provenance(source="autoloss search", run=self.name, trial=t.number,
                                 proxy=space.proxy, metric=space.metric, value=t.values[0],
                                 title=f"loss found by autoloss search {space.name}",
                                 formula=cand.formula(), extra=extra)
        out = self._output(output)
        compiled = {s: cand.compiled(s, sig, set_level=space.slots[s].set_level)
                    for s, sig in self.signatures.items()}
        if len(compiled) == 1:
            (slot, loss), = compiled.items()
            export.to_file(loss, out, name or "SearchedLoss", params=cand.params(slot),
                           trainable_constants=trainable, provenance=prov)
            if check:
                print(export.describe(export.check(out, loss, cand.params(slot))))
            return out
        names = {s: (name or "Searched") + s.title().replace("_", "") + "Loss" for s in compiled}
        weights = {k.split(".", 1)[1]: v for k, v in cand.choices.items()
                   if k.startswith("weights.")}
        others = {k: v for k, v in cand.choices.items() if not k.startswith("weights.")}
        out.write_text(export.to_source_joint(compiled, names,
                                              {s: cand.params(s) for s in compiled},
                                              weights, others, prov))
        if check:  # every slot's function against its compiled loss, in one fresh process
            for report in export.check_many([(out, loss, cand.params(s),
                                              export.function_name(names[s]))
                                             for s, loss in compiled.items()]):
                print(export.describe(report))
        return out

    def _output(self, output: Optional[str | os.PathLike]) -> Path:
        out = Path(output) if output else self.folder / "best_loss.py"
        if not out.is_absolute() and output:
            out = Path.cwd() / out
        return out

    def _export_baseline(self, output, name, trainable, check) -> Path:
        """No candidate held up in the transfer proxy: export the baseline's loss for the
        searched slot (a zoo loss or an expression), saying so in the module's docstring."""
        from ..evaluate import resolve_loss

        transfer = self.transfer
        st = transfer["settings"]
        slot, loss_text = st["searched_slot"], transfer["export"]["loss"]
        compiled = resolve_loss(loss_text, (self.space.slots[slot].signature,), slot)
        is_zoo = loss_text in catalog.default().losses
        base = transfer["baseline"]
        standing = (f"{transfer['metric']} {mean_std(base)} over seeds "
                    f"{', '.join(map(str, transfer['seeds']))}" if "mean" in base
                    else f"failed: {base.get('failed')}")
        why = (f"exported in place of the searched candidates: none held up in "
               f"{transfer['proxy']} against the baseline {base['label']} ({standing})")
        prov = (export.zoo_provenance(loss_text) if is_zoo
                else export.Provenance(formula=loss_text))
        prov = dataclasses.replace(
            prov, title=(f"{prov.title} (zoo id {loss_text}), " if is_zoo else "")
            + f"the transfer baseline's loss, {why}",
            source=f"autoloss search {self.space.name}: the baseline's "
                   + (f"zoo loss {loss_text!r}" if is_zoo else "loss")
                   + ", not a searched candidate",
            run=self.name, proxy=transfer["proxy"], metric=transfer["metric"],
            value=base.get("mean"),
            notes=(f"Transfer verdict: {transfer['verdict']}. " + (prov.notes or "")).strip())
        out = self._output(output)
        export.to_file(compiled, out, name or "SearchedLoss", trainable_constants=trainable,
                       provenance=prov)
        if check:
            print(export.describe(export.check(out, compiled, {})))
        return out


def _transfer_text(transfer: dict, row: Optional[dict]) -> str:
    """A trial's standing in the transfer proxy, for the exported module's provenance."""
    base = transfer["baseline"]
    if row is None:
        return f"not scored in {transfer['proxy']} (not among the top validated candidates)"
    if "failed" in row:
        return f"failed in {transfer['proxy']}: {row['failed']}"
    against = f"vs {base['label']} {mean_std(base)}" if "mean" in base else ""
    word = "holds up" if row.get("holds") else "does not hold up"
    return f"{word} in {transfer['proxy']}: {transfer['metric']} {mean_std(row)} {against}".strip()


def export_run(run: Run | str | os.PathLike, *, trial: Optional[int] = None,
               best: bool = False, output: Optional[str | os.PathLike] = None,
               name: Optional[str] = None, trainable: bool = False, check: bool = False,
               runs_dir: str | os.PathLike = "runs") -> Path:
    """``autoloss export RUN [--trial N | --best]``: trial N, or the run's best (the best
    candidate that holds up in the transfer proxy; the baseline's loss when none does).
    ``run``: a :class:`Run`, or a run folder or its name under ``runs_dir``."""
    if trial is not None and best:
        raise RunError("--trial N and --best exclude each other: --best exports the run's "
                       "best that holds up, --trial N that trial")
    run = run if isinstance(run, Run) else Run.find(run, runs_dir)
    return run.export(trial=trial, output=output, name=name, trainable=trainable, check=check)
