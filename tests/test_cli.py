"""`rlsys eval` and `rlsys inspect` refuse what they cannot read, with the reason."""

from rlsys.cli import main


def test_inspect_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_eval_of_a_directory_that_is_not_a_checkpoint(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a Hugging Face checkpoint" in capsys.readouterr().err


def test_eval_with_a_bad_override_is_a_config_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "reward.nope=1"]) == 2
    assert "reward.nope" in capsys.readouterr().err
