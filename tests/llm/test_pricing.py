"""The price table setting and token usage as money."""
import pytest

from assistant.config import SettingsError, load_settings
from assistant.llm.pricing import UsageRow, cost_of, format_cost, parse_price_table


def test_price_table_reads_and_prices_usage():
    table = parse_price_table("gpt-4o-mini=0.15/0.60, my model:7b = 1/2")
    assert set(table) == {"gpt-4o-mini", "my model:7b"}
    cost = cost_of([UsageRow("gpt-4o-mini", 1_000_000, 500_000), UsageRow("my model:7b", 1000, 1000)], table, "EUR")
    assert cost.amount == pytest.approx(0.15 + 0.30 + 0.003) and format_cost(cost) == "0.4530 EUR"


def test_a_model_without_a_price_makes_the_amount_unknown_not_free():
    cost = cost_of([UsageRow("gpt-4o", 10, 10)], parse_price_table("gpt-4o-mini=0.15/0.60"), "USD")
    assert cost.amount is None and cost.unpriced == ("gpt-4o",)
    assert format_cost(cost) == "cost unknown (no price for gpt-4o)"
    assert cost_of([UsageRow("gpt-4o", 10, 10)], {}, "USD") is None


def test_a_bad_price_table_stops_the_start_naming_the_variable_and_the_form(tmp_path):
    with pytest.raises(SettingsError) as err:
        load_settings({"ASSISTANT_PRICE_TABLE": "gpt-4o: cheap", "ASSISTANT_CONFIG": str(tmp_path / "none.toml")})
    assert "ASSISTANT_PRICE_TABLE='gpt-4o: cheap'" in str(err.value) and "model=PROMPT/COMPLETION" in str(err.value)
