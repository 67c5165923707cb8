"""`uaap api-keys` against a running API: a key made on the command line opens it, and revoking it on the command
line closes it from the next request on, without a restart (the API rereads the store when it changes)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest


def test_a_key_revoked_on_the_command_line_stops_working_in_the_running_api(
    uaap_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastapi.testclient import TestClient

    from serving import keys
    from serving.app import create_app
    from uaap.cli import main

    assert main(["api-keys", "create", "--name", "ops", "--scopes", "predict"]) == 0
    out = capsys.readouterr().out
    key_id = re.search(r"created API key ([a-f0-9]{12}) \(ops; scopes predict;", out)
    token = out.strip().splitlines()[-1]
    assert key_id and token.startswith(f"uaap_{key_id[1]}_")
    assert token not in keys.default_store().read_text()  # the store keeps its hash only
    assert stat.S_IMODE(keys.default_store().stat().st_mode) == 0o600
    with TestClient(create_app()) as client:
        header = {"X-API-Key": token}
        assert client.get("/v1/models", headers=header).status_code == 200
        assert main(["api-keys", "revoke", key_id[1]]) == 0
        assert f"revoked API key {key_id[1]} (ops)" in capsys.readouterr().out
        after = client.get("/v1/models", headers=header)
        assert after.status_code == 403 and "revoked" in after.json()["detail"]
    assert main(["api-keys", "list"]) == 0
    listed = capsys.readouterr().out
    date = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.search(rf"{key_id[1]}\s+ops\s+predict\s+\d+\s+{date}\s+{date}", listed)  # created, then revoked
    assert main(["api-keys", "revoke", "000000000000"]) == 2
    assert "000000000000" in capsys.readouterr().err
