"""Settings of the recorder service (env prefix ``QUANTMESH_RECORDER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from quantmesh.runtime.config import ServiceSettings
from quantmesh.storage import graph, timeseries
from quantmesh.storage.graph.correlation import DEFAULT_WINDOW

ENV_PREFIX = "QUANTMESH_RECORDER_"
TIMESERIES_URL_SETTING = f"{ENV_PREFIX}TIMESERIES_URL"
GRAPH_URL_SETTING = f"{ENV_PREFIX}GRAPH_URL"
HOUR_MS = 3_600_000


class RecorderSettings(ServiceSettings):
    """Recorder settings.

    Attributes
    ----------
    marketdata_address:
        ``host:port`` of market data, whose ticks are recorded.
    inference_address:
        ``host:port`` of inference, whose prediction stream is recorded.
    timeseries_url:
        The timeseries store (:mod:`quantmesh.storage.timeseries`):
        ``chdb:///var/timeseries`` (embedded) or ``clickhouse://user:password@host:8123/db``.
        Default ``QUANTMESH_TIMESERIES_URL`` when set, else ``$QUANTMESH_HOME/timeseries``
        on chDB.
    symbols:
        Symbols to record; empty records every symbol market data serves. The ticks of
        one set of symbols are one stream, numbered by seq, whose stored seqs are its
        cursor: change the set, and a new stream is recorded from its start. The
        predictions recorded are those of the same symbols.
    batch_ticks:
        A write of ticks is made once this many are buffered...
    flush_seconds:
        ...or once the oldest buffered tick (or prediction) has waited this long,
        whichever comes first.
    subscribe_batch_size:
        Ticks per batch asked of market data.
    retry_max_seconds:
        Longest wait between two attempts to write while the store is down; the waits
        double from 0.2 s up to it.
    record_predictions:
        Also record inference's predictions (model name and registry version, symbol,
        time, probability up, class, feature digest), each once across restarts. The
        ticks and the predictions are recorded side by side, each reconnecting on its
        own: an unreachable inference never holds the ticks back, nor market data the
        predictions already served.
    prediction_models:
        Models whose predictions are recorded; empty records every model inference
        serves. Inference numbers its stream by the symbols and the models asked for,
        so they name the stored stream (``EURUSD|*`` for every model): with several
        models served, name them here, so that serving another set of models does not
        renumber the stream under the same name.
    batch_predictions:
        A write of predictions is made once this many are buffered (or after
        ``flush_seconds``).
    graph_url:
        The graph store (:mod:`quantmesh.storage.graph`) whose currency graph the
        recorder weights with the rolling correlations of the recorded symbols, adding
        the edge of a symbol it lacks (from market data's currencies). Default
        ``QUANTMESH_GRAPH_URL`` when set, else ``memory://`` (in the process: nothing
        shared or kept).
    correlation_timeframe_ms:
        Timeframe of the bars, rolled up from the stored ticks, whose closes' log
        returns are correlated (an hour by default).
    correlation_window:
        Number of returns (the last complete bars the symbols share) each correlation
        spans; until that many bars are stored the graph is left as it is.
    correlation_every_seconds:
        The correlations are computed again after ticks are written, at most this often
        (and once more when a finite replay ends).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    port: int = Field(default=8009, ge=0, le=65535)
    marketdata_address: str = "127.0.0.1:8001"
    inference_address: str = "127.0.0.1:8006"
    timeseries_url: str = Field(default_factory=timeseries.shared_url)
    symbols: tuple[str, ...] = ()
    batch_ticks: int = Field(default=50_000, ge=1, le=1_000_000)
    flush_seconds: float = Field(default=1.0, gt=0.0, le=3600.0)
    subscribe_batch_size: int = Field(default=5_000, ge=1, le=100_000)
    retry_max_seconds: float = Field(default=10.0, ge=0.2, le=600.0)
    record_predictions: bool = True
    prediction_models: tuple[str, ...] = ()
    batch_predictions: int = Field(default=10_000, ge=1, le=1_000_000)
    graph_url: str = Field(default_factory=graph.shared_url)
    correlation_timeframe_ms: int = Field(default=HOUR_MS, ge=1_000, le=7 * 24 * HOUR_MS)
    correlation_window: int = Field(default=DEFAULT_WINDOW, ge=2, le=100_000)
    correlation_every_seconds: float = Field(default=60.0, gt=0.0, le=86_400.0)
