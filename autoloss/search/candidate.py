"""A candidate: one expression per loss slot plus the categorical choices for the proxy."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .. import canon
from .. import expr as E
from ..compiler import CompiledLoss, compile_loss
from ..expr import Expr, Param
from ..parse import parse
from ..signatures import SIGNATURES


@dataclass(frozen=True)
class Candidate:
    slots: dict[str, Expr]
    choices: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    parents: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        """Canonical identity: equal spellings, parameter values and choices hash alike."""
        return self.key_with(None)

    def key_with(self, canonicalizer: Optional[canon.Canonicalizer]) -> str:
        """:attr:`key`, canonicalizing with ``canonicalizer`` (a memo shared across a
        population: the filters canonicalize each candidate again)."""
        parts = [f"{s}={canon.canonical_hash(e, canonicalizer=canonicalizer)}"
                 for s, e in sorted(self.slots.items())]
        parts.append(json.dumps(self.choices, sort_keys=True))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    @property
    def complexity(self) -> int:
        return sum(E.size(e) for e in self.slots.values())

    def formula(self, simplified: bool = True) -> str:
        """The candidate as text; ``simplified``: constants folded and terms collected (the
        canonical form, printed with -, /), which reads better than a raw mutated tree."""
        show = (lambda e: E.to_infix(canon.lower(canon.canonical(e)))) if simplified \
            else E.to_infix
        text = "; ".join(f"{s}: {show(e)}" for s, e in self.slots.items())
        if self.choices:
            text += "; " + ", ".join(f"{k}={v}" for k, v in self.choices.items())
        return text

    def params(self, slot: str) -> dict[str, float]:
        return {k: p.default for k, p in E.params(self.slots[slot]).items()}

    def scaled(self, slot: str, weight: float) -> "Candidate":
        """The candidate with ``slot``'s loss multiplied by ``weight``."""
        slots = dict(self.slots)
        slots[slot] = E.mul(E.const(weight), slots[slot])
        return dataclasses.replace(self, slots=slots)

    def compiled(self, slot: str, signature: str, mode: str = "search",
                 set_level: Optional[Mapping[str, Any]] = None) -> CompiledLoss:
        """The slot's expression compiled; for a signature that is one piece of a set-level
        loss (rank: the smoothed step), the set-level loss built on it with the options
        ``set_level`` (the space slot's table: rank's ``update``, ``interpolate``), what a
        proxy calls (its ``step`` is the compiled expression)."""
        from ..zoo import slot_loss

        loss = compile_loss(self.slots[slot], signature, name=f"candidate_{slot}", mode=mode)
        return slot_loss(loss, **dict(set_level or {}))

    def attrs(self) -> dict[str, Any]:
        """JSON-serializable trial attributes from which the candidate can be rebuilt."""
        out: dict[str, Any] = {"origin": self.origin, "parents": list(self.parents),
                               "choices": self.choices, "key": self.key,
                               "complexity": self.complexity}
        out["formula"] = self.formula()
        for slot, e in self.slots.items():
            out[f"expr.{slot}"] = E.to_infix(e)
            out[f"hash.{slot}"] = canon.canonical_hash(e)
            out[f"params.{slot}"] = {k: [p.default, p.low, p.high, p.log]
                                     for k, p in E.params(e).items()}
        return out

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], signatures: Mapping[str, str]) -> "Candidate":
        slots = {}
        for slot, signature in signatures.items():
            sig = SIGNATURES[signature]
            params = dict(sig.params)
            for name, (default, low, high, log) in attrs.get(f"params.{slot}", {}).items():
                params[name] = Param(name, default, low, high, log)
            slots[slot] = parse(attrs[f"expr.{slot}"], sig.names, params,
                                where=f"trial attribute expr.{slot}")
        return cls(slots, dict(attrs.get("choices", {})), attrs.get("origin", ""),
                   tuple(attrs.get("parents", ())))
