"""CI proves the README: `.ci/run` runs exactly the README's test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_lines = [line for line in (ROOT / ".ci/run").read_text().splitlines()
                if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert len(ci_lines) == 1, ci_lines
    assert ci_lines[0] in readme
    assert "pytest" in ci_lines[0]


def test_readme_main_command_runs_rlsys_train():
    readme = (ROOT / "README.md").read_text()
    assert "&& .venv/bin/rlsys train\n" in readme
