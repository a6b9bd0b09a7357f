"""What a job left, as one typed record: the diff's shape, the tests the agent ran, the kind of result and
what it rests on, checked claims, review flags, usage and the rank in a best-of-N group.

The job row keeps it as JSON (`jobs.outcome`); `Outcome.from_dict` reads any row ever written (a missing key
takes its default, an unknown key is kept in `extra` and written back unchanged), `to_dict` writes the keys
that were read or set (so a row keeps exactly the keys it always had). Three writers fill it in turn (the pipeline: the diff and tests; the assessment: kind, claims,
flags, usage; the group ranking: rank), each with `replace`, so none drops what another wrote.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FIX, DRAFT, FINDINGS, NO_RESULT = "fix", "draft", "findings", "no result"
KINDS = (FIX, DRAFT, FINDINGS, NO_RESULT)


def kind_rank(kind: str | None) -> int:
    """Best first: fix, draft, findings, no result; an unknown kind (a job from before kinds) last."""
    return KINDS.index(kind) if kind in KINDS else len(KINDS)


@dataclass(frozen=True)
class Outcome:
    # the pipeline, from the workspace diff and the agent's test runs
    files: list[list[str]] = field(default_factory=list)       # [status, path]
    diff_lines: int | None = None
    diff_notes: list[str] = field(default_factory=list)
    tests: list[dict[str, Any]] = field(default_factory=list)  # {"command", "exit_code", "chunk_id"}
    tests_passed: bool | None = None                            # the last test run's result; None: no test ran
    test_commands: list[str] = field(default_factory=list)     # test commands the repository names (AGENTS.md)
    # the assessment (jobs/results.py), decided from the log
    kind: str | None = None                                     # fix | draft | findings | no result
    kind_reason: str = ""
    evidence: list[dict[str, Any]] = field(default_factory=list)
    last_edit: dict[str, Any] | None = None
    claims: list[dict[str, Any]] = field(default_factory=list)
    flags: list[dict[str, Any]] = field(default_factory=list)
    summary_source: str = ""
    summary_withheld: str = ""                                  # why the agent's own last words are not shown
    usage: dict[str, Any] = field(default_factory=dict)
    # the group ranking of a best-of-N request
    rank: int | None = None
    recommended: bool = False
    extra: dict[str, Any] = field(default_factory=dict)         # keys of a newer release, kept as they are
    present: frozenset[str] = field(default=frozenset(), compare=False, repr=False)  # keys read or set

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "Outcome":
        raw = dict(raw or {})
        names = _FIELDS
        known = {key: value for key, value in raw.items() if key in names and value is not None}
        return cls(**known, extra={key: value for key, value in raw.items() if key not in names},
                   present=frozenset(key for key in raw if key in names))

    def to_dict(self) -> dict[str, Any]:
        """The stored form: every key that was read or set, and unknown keys as they came."""
        out: dict[str, Any] = dict(self.extra)
        out.update({name: getattr(self, name) for name in _ORDER if name in self.present})
        return out

    def replace(self, **changes) -> "Outcome":
        """A copy with some keys set (they are written from now on, even when empty)."""
        unknown = set(changes) - _FIELDS
        if unknown:
            raise TypeError(f"an outcome has no {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, present=self.present | frozenset(changes), **changes)

    @property
    def assessed(self) -> bool:
        return bool(self.kind)

    @property
    def size(self) -> int:
        """Diff lines, for ranking: an unknown size ranks last."""
        return 10**9 if self.diff_lines is None else self.diff_lines


_ORDER = tuple(f.name for f in dataclasses.fields(Outcome) if f.name not in ("extra", "present"))
_FIELDS = frozenset(_ORDER)
