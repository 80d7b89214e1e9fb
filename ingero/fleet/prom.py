"""A small read-only client of Prometheus's HTTP query API (``/api/v1/query`` and ``/api/v1/query_range``).

Only the two query endpoints are ever called: a PromQL string can read, never write, delete or snapshot.
Every query carries a time limit (Prometheus's own ``timeout`` parameter, and the HTTP request's), and the
answers are bounded by the caller (:mod:`ingero.fleet.query`). Prometheus's refusals come back as
:class:`PromQLRefused` with its message (a parse error says line:column).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ingero.errors import IngeroError

#: the longest a query may run in Prometheus (and the HTTP wait, plus a margin)
QUERY_TIMEOUT_S = 10.0
#: the env variable naming the Prometheus server for query_fleet / ingero fleet
PROMETHEUS_ENV = "INGERO_PROMETHEUS"


class PromQLRefused(IngeroError):
    """Prometheus refused the query (not PromQL, a bad range, too many samples...)."""


class PrometheusUnavailable(IngeroError):
    """Prometheus cannot be reached or answered something that is not its API."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector (or a scalar: no labels)."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class RangeSeries:
    labels: dict[str, str]
    points: tuple[tuple[float, float], ...]  # (unix time s, value)


def _float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return math.nan


class Prometheus:
    """``Prometheus("http://127.0.0.1:9090").instant("up")``; ``token``: a bearer token for a guarded one."""

    def __init__(self, url: str, *, timeout_s: float = QUERY_TIMEOUT_S, token: str = "") -> None:
        u = urllib.parse.urlparse(url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise IngeroError(f"--prometheus {url!r}: expected the http(s) URL of a Prometheus server",
                              "e.g. --prometheus http://127.0.0.1:9090")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._token = token

    def _get(self, path: str, params: dict[str, str]) -> dict:
        params = {**params, "timeout": f"{self.timeout_s:g}s"}
        req = urllib.request.Request(f"{self.url}{path}?{urllib.parse.urlencode(params)}")
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s + 5) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            body = e.read()
            if e.code not in (400, 422, 503):
                raise PrometheusUnavailable(f"Prometheus at {self.url} answered HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise PrometheusUnavailable(f"cannot reach Prometheus at {self.url}: {reason}",
                                        "is it running? check --prometheus / INGERO_PROMETHEUS") from None
        try:
            doc = json.loads(body)
        except ValueError:
            raise PrometheusUnavailable(f"{self.url} did not answer as Prometheus's API") from None
        if doc.get("status") != "success":
            raise PromQLRefused(f"{doc.get('errorType', 'error')}: {doc.get('error', '?')}")
        return doc["data"]

    def instant(self, query: str, at: float | None = None) -> list[Sample]:
        params = {"query": query}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        kind, result = data.get("resultType"), data.get("result")
        if kind in ("scalar", "string"):
            return [Sample({}, _float(result[1]) if kind == "scalar" else math.nan)]
        if kind == "matrix":
            raise PromQLRefused("the query returns a range vector: evaluate it over time with 'since'/'step', "
                                "or wrap it in a function (rate(x[5m]), max_over_time(x[5m]))")
        return [Sample(r["metric"], _float(r["value"][1])) for r in result]

    def range(self, query: str, start: float, end: float, step_s: float) -> list[RangeSeries]:
        data = self._get("/api/v1/query_range", {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                                 "step": f"{step_s:g}"})
        return [RangeSeries(r["metric"], tuple((float(t), _float(v)) for t, v in r["values"]))
                for r in data.get("result", [])]
