from pathlib import Path

from assistant.agent.agents_md import commands_in, discover_agents_md


def reader(root: Path):
    """What the sandbox's read_files gives back, from a plain directory (no sandbox needed for the merge rules)."""
    def read(paths):
        return {p: (root / p).read_text() if (root / p).is_file() else None for p in paths}
    return read


def test_root_to_workdir_deeper_later_override_wins_and_cap(tmp_path):
    (tmp_path / "AGENTS.md").write_text("root rules: run `make test`")
    sub = tmp_path / "pkg" / "core"
    sub.mkdir(parents=True)
    (tmp_path / "pkg" / "AGENTS.md").write_text("pkg rules")
    (tmp_path / "pkg" / "AGENTS.override.md").write_text("pkg override")
    (sub / "AGENTS.md").write_text("core rules")
    merged = discover_agents_md(reader(tmp_path), "pkg/core")
    assert merged.index("root rules") < merged.index("pkg override") < merged.index("core rules")
    assert "pkg rules" not in merged
    assert discover_agents_md(reader(tmp_path), "../..") == discover_agents_md(reader(tmp_path))   # never leaves the repo
    (tmp_path / "AGENTS.md").write_text("x" * 100)
    assert "truncated at the size cap" in discover_agents_md(reader(tmp_path), max_bytes=40)
    assert commands_in("run `make test` then `python3 -m pytest -q`; see `README`") == (
        "README", "make test", "python3 -m pytest -q")
