"""The delivery probe as `jobpub web` shows it: /api/stats and the overview, from SQL."""

from __future__ import annotations

import psycopg
from fastapi.testclient import TestClient

from jobpub.web.app import create_app
from jobpub.web.config import WebConfig


def test_stats_and_overview_show_the_probes_last_hour(db_url: str) -> None:
    with TestClient(create_app(WebConfig(db_url))) as client:
        assert client.get("/api/stats").json()["probe"] == {
            "last_received_at": None, "last_latency_s": None, "received": 0, "missing": 0,
        }  # fmt: skip
        assert "no probe in the last hour" in client.get("/partials/overview").text

        with psycopg.connect(db_url, autocommit=True) as sql:
            # Two slots (3600 is no multiple of 7), the first asked for twice as replicas do: one
            # received 0.25 s late, one missing.
            for _ in range(2):
                sql.execute("SELECT jobpub_schedule_probe('p/probe', 3600)")
            sql.execute("SELECT jobpub_schedule_probe('p/probe', 7)")
            sql.execute(
                "UPDATE delivery_probes SET fire_at = now() - interval '10 min', "
                "received_at = now() - interval '10 min' + interval '250 ms' "
                "WHERE probe_key = (SELECT min(probe_key) FROM delivery_probes)"
            )
            sql.execute(
                "UPDATE delivery_probes SET fire_at = now() - interval '5 min', "
                "missing_at = now() WHERE received_at IS NULL"
            )
            assert sql.execute("SELECT count(*) FROM delivery_probes").fetchone() == (2,)

        probe = client.get("/api/stats").json()["probe"]
        assert probe["received"] == 1
        assert probe["missing"] == 1
        assert abs(probe["last_latency_s"] - 0.25) < 1e-6
        assert "1 received, 1 missing in the last hour" in client.get("/partials/overview").text
