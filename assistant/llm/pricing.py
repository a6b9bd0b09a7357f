"""Token usage as money: an optional price table (per million tokens, per model) applied to usage rows."""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_ENTRY = re.compile(r"^\s*(?P<model>[^=\s][^=]*?)\s*=\s*(?P<prompt>\d+(?:\.\d+)?)\s*/\s*(?P<completion>\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class Price:
    prompt_per_million: float
    completion_per_million: float


def parse_price_table(text: str | None) -> dict[str, Price]:
    """`model=prompt/completion` pairs separated by commas, prices per million tokens.
    Raises ValueError naming the entry that does not read and the form that does."""
    table: dict[str, Price] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        match = _ENTRY.match(entry)
        if not match:
            raise ValueError(f"cannot read {entry.strip()!r}; write model=PROMPT/COMPLETION prices per million tokens, "
                             "pairs separated by commas (e.g. gpt-4o-mini=0.15/0.60,gpt-4o=2.50/10)")
        table[match["model"]] = Price(float(match["prompt"]), float(match["completion"]))
    return table


@dataclass(frozen=True)
class UsageRow:
    model: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Cost:
    amount: float | None           # None when a model used has no price
    currency: str
    unpriced: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"amount": self.amount, "currency": self.currency, "unpriced_models": list(self.unpriced)}


def cost_of(rows: Iterable[UsageRow], table: dict[str, Price], currency: str) -> Cost | None:
    """The money the rows cost, or None without a price table. A model missing from the table makes
    the amount unknown (and is named), rather than silently counted as free."""
    if not table:
        return None
    amount, unpriced = 0.0, []
    for row in rows:
        price = table.get(row.model)
        if price is None:
            if row.model not in unpriced and (row.prompt_tokens or row.completion_tokens):
                unpriced.append(row.model)
            continue
        amount += (row.prompt_tokens * price.prompt_per_million + row.completion_tokens * price.completion_per_million) / 1e6
    return Cost(None if unpriced else round(amount, 6), currency, tuple(unpriced))


def format_cost(cost: Cost | None) -> str:
    if cost is None:
        return ""
    if cost.amount is None:
        return f"cost unknown (no price for {', '.join(cost.unpriced)})"
    return f"{cost.amount:.4f} {cost.currency}" if cost.amount < 1 else f"{cost.amount:.2f} {cost.currency}"


def format_tokens(count: int) -> str:
    return f"{count / 1000:.1f}k" if count >= 10_000 else f"{count:,}"
