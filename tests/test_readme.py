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


def test_config_reference_lists_every_field():
    from dataclasses import fields

    from rlsys.config import RLConfig

    readme = (ROOT / "README.md").read_text()
    reference = readme[readme.index("## Config reference"):readme.index("## Results seen here")]
    missing = []
    for section in fields(RLConfig):
        for f in fields(section.default_factory()):
            if f"`{section.name}.{f.name}`" not in reference and f"`{f.name}`" not in reference:
                missing.append(f"{section.name}.{f.name}")
    assert not missing, f"README config reference lacks {missing}"
