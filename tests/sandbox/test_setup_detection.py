"""Which setup commands a repository gets when the request names none."""

from __future__ import annotations

from pathlib import Path

from assistant.sandbox.setup_commands import setup_commands as detect


class Files:
    """A committed tree as setup detection sees it (the host mirror, in the product)."""

    def __init__(self, root: Path):
        self.root = root

    def top_level(self) -> list[str]:
        return [p.name + "/" if p.is_dir() else p.name for p in self.root.iterdir()]

    def read(self, path: str) -> str | None:
        target = self.root / path
        return target.read_text() if target.is_file() else None


def setup_commands(root: Path, requested):
    return detect(Files(root), requested)


def write(root, files):
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


def test_request_wins_over_everything(tmp_path):
    write(tmp_path, {".assistant/setup.sh": "true", "pyproject.toml": ""})
    assert setup_commands(tmp_path, ["make deps", " "]) == ["make deps"]
    assert setup_commands(tmp_path, []) == []


def test_repo_script_wins_over_detection(tmp_path):
    write(tmp_path, {".assistant/setup.sh": "true", "package-lock.json": "{}"})
    assert setup_commands(tmp_path, None) == ["bash .assistant/setup.sh"]


def test_python_project_gets_a_venv_and_its_test_extra(tmp_path):
    write(tmp_path, {"pyproject.toml": "[project]\nname='x'\n[project.optional-dependencies]\ndocs=['a']\ntest=['b']\n",
                     "requirements-dev.txt": "pytest\n"})
    assert setup_commands(tmp_path, None) == [
        "python3 -m venv /home/agent/.venv",
        "pip install -r requirements-dev.txt",
        "pip install -e '.[test]'",
    ]


def test_python_project_without_a_test_extra_installs_plain(tmp_path):
    write(tmp_path, {"setup.cfg": "[options.extras_require]\ndev = black\n", "setup.py": "from setuptools import setup\n"})
    assert setup_commands(tmp_path, None)[-1] == "pip install -e '.[dev]'"
    write(tmp_path, {"setup.cfg": "[metadata]\nname = x\n"})
    assert setup_commands(tmp_path, None)[-1] == "pip install -e ."


def test_node_project_with_a_lockfile_gets_npm_ci(tmp_path):
    write(tmp_path, {"package.json": "{}", "package-lock.json": "{}"})
    assert setup_commands(tmp_path, None) == ["npm ci"]


def test_nothing_recognised_means_no_setup(tmp_path):
    write(tmp_path, {"README.md": "hi"})
    assert setup_commands(tmp_path, None) == []
