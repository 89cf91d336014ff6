"""open_timeseries: the URL picks the adapter; a wrong or unreachable one names the setting."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantmesh.storage.resilience import Backoff
from quantmesh.storage.timeseries import default_url, open_timeseries
from quantmesh.storage.timeseries.chdb import ChdbTimeseries
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError

SETTING = "QUANTMESH_RECORDER_TIMESERIES_URL"
QUICK = Backoff(attempts=2, first_delay=0.01, max_delay=0.01)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


def test_the_default_is_chdb_under_the_home_in_force_when_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUANTMESH_HOME", "/srv/quantmesh")
    assert default_url() == "chdb:////srv/quantmesh/timeseries"
    monkeypatch.setenv("QUANTMESH_HOME", "var")
    assert default_url() == "chdb:///var/timeseries"


def test_no_url_opens_chdb_in_the_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUANTMESH_HOME", str(tmp_path))

    store = open_timeseries(None, SETTING)
    try:
        assert isinstance(store, ChdbTimeseries)
        assert store.folder == tmp_path / "timeseries"
        assert store.last_seq("EURUSD") is None
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://localhost/db", "scheme 'postgresql'"),
        ("chdb://host/timeseries", "three slashes"),
        ("clickhouse://localhost:8123/db?compress=1", "unknown option"),
        ("clickhouse://localhost:8123/db?connect_timeout=soon", "connect_timeout must be"),
        ("clickhouse://localhost:99999/db", "not a valid URL"),
    ],
)
def test_a_wrong_url_fails_naming_the_setting(url: str, why: str) -> None:
    with pytest.raises(StoreConfigError, match=why) as raised:
        open_timeseries(url, SETTING)
    assert SETTING in str(raised.value)


def test_an_unreachable_server_fails_at_start_naming_the_setting_without_the_password() -> None:
    url = f"clickhouse://quantmesh:s3cret@127.0.0.1:{closed_port()}/quantmesh"
    started = time.monotonic()

    with pytest.raises(StoreUnavailableError, match="ClickHouse is unreachable") as raised:
        open_timeseries(url, SETTING, backoff=QUICK)

    assert SETTING in str(raised.value)
    assert "s3cret" not in str(raised.value)
    assert time.monotonic() - started < 5


def test_a_second_chdb_folder_in_one_process_is_a_configuration_error(tmp_path: Path) -> None:
    first = open_timeseries(f"chdb:///{tmp_path}/one", SETTING)
    try:
        with pytest.raises(StoreConfigError, match="one embedded database per process") as raised:
            open_timeseries(f"chdb:///{tmp_path}/two", SETTING)
        assert SETTING in str(raised.value)
    finally:
        first.close()
    # Once the first is closed, another folder opens.
    open_timeseries(f"chdb:///{tmp_path}/two", SETTING).close()


def test_a_chdb_folder_another_process_holds_is_unavailable(tmp_path: Path) -> None:
    folder = tmp_path / "held"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from chdb import session; "
            f"s = session.Session({str(folder)!r}); print('open', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreUnavailableError, match="open in another process") as raised:
            open_timeseries(f"chdb:///{folder}", SETTING)
        assert SETTING in str(raised.value)
    finally:
        holder.communicate("", timeout=30)
