"""The root `dgmerge` app: every command module is registered and answers --help."""

import pytest
from typer.testing import CliRunner

from dgmerge.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["demo"], ["run"], ["train"], ["methods"], ["evaluate"], ["report"], ["data"],
                                     ["data", "check"], ["merge"], ["inspect"], ["sweep"], ["figures"]])
def test_help_everywhere(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
