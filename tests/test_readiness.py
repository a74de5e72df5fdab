"""`GET /readyz`: ready while the database, the picture folder and (on Celery) the broker answer;
503 naming the part that does not, with no host or reason in the answer."""

from __future__ import annotations

import shutil

from fastapi.testclient import TestClient

from reverie.server.app import create_app
from reverie.server.config import ServerConfig
from servers import redis_server
from test_server_api import make_client


def test_ready_until_the_picture_folder_goes(tmp_path):
    with make_client(tmp_path) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ok", "database": "ok", "storage": "ok"}
        shutil.rmtree(tmp_path / "studio" / "images")  # the shared folder's mount went away
        gone = client.get("/readyz")
        assert gone.status_code == 503 and gone.json() == {"status": "unavailable", "database": "ok", "storage": "unavailable"}
        assert client.get("/healthz").status_code == 200  # alive all the same


def test_not_ready_while_the_database_server_is_gone(tmp_path, postgres_session_server, caplog):
    url = postgres_session_server.new_database()
    with make_client(tmp_path, database=url) as client:
        assert client.get("/readyz").json()["database"] == "ok"
        postgres_session_server.drop_database(url)  # its connections closed, the database gone
        answer = client.get("/readyz")
        assert answer.status_code == 503 and answer.json()["database"] == "unavailable"
        assert "127.0.0.1" not in answer.text  # where it is stays in the log
    assert any("database is unavailable" in record.getMessage() for record in caplog.records)


def test_a_celery_front_end_is_not_ready_while_its_broker_is_down(tmp_path):
    with redis_server() as broker:
        config = ServerConfig(data_dir=tmp_path / "studio", default_model="tiny-random", device="cpu", broker=broker.url())
        with TestClient(create_app(config)) as front:
            assert front.get("/readyz").json() == {"status": "ok", "database": "ok", "storage": "ok", "broker": "ok"}
            broker.kill()
            answer = front.get("/readyz")
            assert answer.status_code == 503 and answer.json()["broker"] == "unavailable"
            assert answer.json()["database"] == "ok"
