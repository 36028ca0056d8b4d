from __future__ import annotations

import stat
from pathlib import Path

import pytest

# Importing Rasa tags every ${VAR} scalar globally in ruamel.yaml; these tests must hold with Rasa
# loaded, as they are in rasa run and in the CLI's tests run in the same process.
import rasa.shared.utils.io  # noqa: F401

from tests.conftest import PLACEHOLDERS
from zapi_channel.errors import ConfigError
from zapi_channel.setup.credstore import CredentialsFile, read_dotenv

LITERAL = """\
# Rasa channels
rest:

zapi_channel.ZApiInput:
  instance_id: OLDID   # from Z-API's dashboard
  instance_token: OLDTOKEN
  client_token: OLDCLIENT
  webhook_token: HOOK
"""


def test_literal_values_are_rewritten_in_place_keeping_comments(tmp_path: Path) -> None:
    path = tmp_path / "credentials.yml"
    path.write_text(LITERAL)
    CredentialsFile(path, environ={}).write({"instance_token": "NEWTOKEN"})
    text = path.read_text()
    assert "instance_token: NEWTOKEN" in text
    assert "# from Z-API's dashboard" in text
    assert "# Rasa channels" in text
    assert "rest:" in text
    assert "OLDTOKEN" not in text


def test_placeholders_stay_and_the_value_goes_to_dotenv(tmp_path: Path) -> None:
    path = tmp_path / "credentials.yml"
    path.write_text(PLACEHOLDERS)
    (tmp_path / ".env").write_text("# local secrets\nOTHER=1\nZAPI_INSTANCE_TOKEN=old\n")
    store = CredentialsFile(path, environ={})
    store.write({"instance_token": "NEWTOKEN", "client_token": "NEWCLIENT"})
    assert path.read_text() == PLACEHOLDERS
    env = read_dotenv(tmp_path / ".env")
    assert env == {
        "OTHER": "1",
        "ZAPI_INSTANCE_TOKEN": "NEWTOKEN",
        "ZAPI_CLIENT_TOKEN": "NEWCLIENT",
    }
    assert "# local secrets" in (tmp_path / ".env").read_text()


def test_resolved_block_expands_from_environment_over_dotenv(tmp_path: Path) -> None:
    path = tmp_path / "credentials.yml"
    path.write_text(PLACEHOLDERS)
    (tmp_path / ".env").write_text("ZAPI_INSTANCE_ID=fromfile\nZAPI_CLIENT_TOKEN=fromfile\n")
    block = CredentialsFile(path, environ={"ZAPI_CLIENT_TOKEN": "fromenv"}).resolved_block()
    assert block["instance_id"] == "fromfile"
    assert block["client_token"] == "fromenv"
    assert block["instance_token"] == ""


def test_written_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "credentials.yml"
    path.write_text(PLACEHOLDERS)
    store = CredentialsFile(path, environ={})
    store.write({"instance_id": "X"})
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600
    path2 = tmp_path / "other.yml"
    path2.write_text(LITERAL)
    CredentialsFile(path2, environ={}).write({"instance_id": "Y"})
    assert stat.S_IMODE(path2.stat().st_mode) == 0o600


def test_a_missing_block_is_created(tmp_path: Path) -> None:
    path = tmp_path / "credentials.yml"
    path.write_text("rest:\n")
    CredentialsFile(path, environ={}).write({"instance_id": "X", "active": False})
    block = CredentialsFile(path, environ={}).raw_block()
    assert block == {"instance_id": "X", "active": False}


def test_a_failed_yaml_write_puts_dotenv_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "credentials.yml"
    path.write_text(PLACEHOLDERS.replace("${ZAPI_CLIENT_TOKEN}", "LITERALCLIENT"))
    dotenv = tmp_path / ".env"
    dotenv.write_text("ZAPI_INSTANCE_TOKEN=old\n")
    before = (path.read_bytes(), dotenv.read_bytes())
    import zapi_channel.setup.credstore as credstore

    real = credstore.atomic_write

    def failing(target: Path, text: str, mode: int = 0o600) -> None:
        if Path(target) == path:
            raise OSError("disk full")
        real(target, text, mode)

    monkeypatch.setattr(credstore, "atomic_write", failing)
    with pytest.raises(OSError):
        CredentialsFile(path, environ={}).write(
            {"instance_token": "new", "client_token": "newclient"}
        )
    assert (path.read_bytes(), dotenv.read_bytes()) == before


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "credentials.yml"
    path.write_text("zapi_channel.ZApiInput: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        CredentialsFile(path, environ={}).raw_block()


def test_values_make_cannot_read_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "credentials.yml"
    path.write_text(PLACEHOLDERS)
    with pytest.raises(ConfigError):
        CredentialsFile(path, environ={}).write({"instance_token": "has space $x"})
