"""Reading a job's log as evidence: test runs, edits and verdicts from command lines and outputs."""
import pytest

from assistant.agent.evidence import LogRecord, is_edit, is_test_command, last_edit, named_checks, normalise, verdict


@pytest.mark.parametrize("command", [
    "pytest", "python -m pytest -q tests/test_a.py", "python3 -m unittest -v 2>&1", ".venv/bin/python -m pytest -x",
    "cd src && PYTHONPATH=. .venv/bin/pytest -q | tail -5", "timeout 120 pytest -k slow", "uv run pytest",
    "poetry run python -m pytest", "tox -e py311", "nox -s tests", "npm test", "npm run test:unit", "yarn test",
    "pnpm test", "go test ./...", "cargo test --all", "make test", "make check", "python tests/test_parser.py",
    "python setup.py test", "FOO=1 env BAR=2 py.test", "npx jest", "bundle exec rspec",
])
def test_common_runners_are_test_runs(command):
    assert is_test_command(command)


@pytest.mark.parametrize("command", [
    "cat tox.ini", "ls -la tests", "grep -rn pytest .", "git diff", "python -c 'print(1)'", "pip install pytest",
    "sed -n 1,20p test_calc.py", "make", "npm install", "go build ./...", "echo pytest", "apply_patch",
])
def test_other_commands_are_not(command):
    assert not is_test_command(command)


def test_commands_named_in_agents_md_count_and_prefixes_of_them_too():
    named = ["./scripts/check.sh", "ls", "bin/verify --fast"]
    assert named_checks(named) == ("check.sh", "verify --fast")  # `ls` named in prose is no check
    assert is_test_command("./scripts/check.sh", named)
    assert is_test_command("cd /workspace && bin/verify --fast --verbose", named)
    assert not is_test_command("ls -la", named)


@pytest.mark.parametrize("command,edits", [
    ("sed -i 's/a/b/' calc.py", True), ("echo x > notes.txt", True), ("cat > f.py <<EOF\nx = 1\nEOF", True),
    ("mv a.py b.py", True), ("git checkout -- calc.py", True), ("python3 -c \"open('f','w').write('x')\"", True),
    ("black src", True), ("pytest > out.txt", False), ("ls > /dev/null", False), ("pytest 2>&1 | tee /tmp/log", False),
    ("grep -n add calc.py", False), ("black --check src", False), ("git status", False), ("echo hi 2>&1", False),
])
def test_shell_edits_are_recognised(command, edits):
    assert is_edit(LogRecord("abcdef", 0, "agent", command, 0)) is edits


def test_only_applied_patches_are_edits_and_setup_never_is():
    assert is_edit(LogRecord("a", 0, "agent", "apply_patch", 0))
    assert not is_edit(LogRecord("a", 0, "agent", "apply_patch", 1))       # refused: nothing changed
    assert not is_edit(LogRecord("a", 0, "setup", "pip install -e . > log.txt", 0))
    records = [LogRecord("a", 0, "agent", "apply_patch", 0), LogRecord("b", 1, "agent", "sed -i s/x/y/ f", 1),
               LogRecord("c", 2, "agent", "pytest", 0)]
    assert last_edit(records).chunk_id == "b"  # a failing command line may have written before it failed


def test_normalise_drops_plumbing_so_reruns_compare_equal():
    assert normalise("cd /workspace && python3 -m pytest -q tests 2>&1 | tail -20") == normalise("pytest -q tests")


PYTEST_FAIL = "tests/test_a.py .F\n=========== 1 failed, 1 passed in 0.05s ===========\n"
PYTEST_PASS = "tests/test_a.py ..\n=========== 2 passed in 0.03s ===========\n"
UNITTEST_FAIL = "F.\n----\nRan 2 tests in 0.001s\n\nFAILED (failures=1)\n"


def test_a_pipe_hides_the_exit_code_so_the_runner_summary_decides():
    piped = "python -m pytest -q 2>&1 | tail -5"
    assert verdict(LogRecord("a", 0, "agent", piped, 0, text=PYTEST_FAIL)).passed is False
    assert "summary line" in verdict(LogRecord("a", 0, "agent", piped, 0, text=PYTEST_FAIL)).note
    assert verdict(LogRecord("a", 0, "agent", piped, 0, text=PYTEST_PASS)).passed is True
    assert verdict(LogRecord("a", 0, "agent", "python3 -m unittest 2>&1 | cat", 0, text=UNITTEST_FAIL)).passed is False
    assert verdict(LogRecord("a", 0, "agent", piped, 0, text="no summary here")).passed is False
    assert verdict(LogRecord("a", 0, "agent", "set -o pipefail; pytest | tail", 1, text=PYTEST_PASS)).passed is False


def test_unpiped_runs_and_timeouts():
    assert verdict(LogRecord("a", 0, "agent", "pytest", 0, text=PYTEST_FAIL)).passed  # the exit code is the runner's
    assert not verdict(LogRecord("a", 0, "agent", "pytest", 0, timed_out=True)).passed
    assert not verdict(LogRecord("a", 0, "agent", "pytest", 5)).passed               # no tests collected
