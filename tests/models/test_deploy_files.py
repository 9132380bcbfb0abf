"""docker-compose.yml, Prometheus's config, the Grafana dashboard and the Dockerfile agree with
the code: we cannot run Docker here, so what can be checked without it is checked."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import yaml
from prometheus_client import Counter, Histogram

from models import metrics
from models.settings import Settings
from worker.gauges import Snapshot, _families

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_app_service_waits_for_the_one_shot_migration():
    services = compose()["services"]
    assert services["migrate"]["command"] == ["wadispatch", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "beat", "flower"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
        assert "migrate" not in " ".join(services[name]["command"]), f"{name} migrates on its own"


def test_health_checks_postgres_volume_and_a_stop_grace_longer_than_the_workers():
    document = compose()
    services = document["services"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    worker_check = " ".join(services["worker"]["healthcheck"]["test"])
    assert "inspect ping" in worker_check and "worker@$$(hostname)" in worker_check
    assert services["worker"]["command"][-2:] == ["--hostname", "worker@%h"]  # the node the check pings
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "pgdata" in document["volumes"]
    grace = int(services["worker"]["stop_grace_period"].rstrip("s"))
    assert grace > Settings().worker_shutdown_grace_s
    assert "WADISPATCH_FLOWER_BASIC_AUTH" in services["flower"]["environment"]


def test_prometheus_scrapes_the_ports_the_services_serve():
    services = compose()["services"]
    env = services["worker"]["environment"]
    assert env["WADISPATCH_WORKER_METRICS_HOST"] == "0.0.0.0"
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["wadispatch-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["wadispatch-worker"]["dns_sd_configs"][0]["port"] == int(env["WADISPATCH_WORKER_METRICS_PORT"])
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]


def test_the_rabbitmq_profile_adds_the_broker_and_leaves_redis_the_default():
    services = compose()["services"]
    rabbit = services["rabbitmq"]
    assert rabbit["profiles"] == ["rabbitmq"]
    assert "consumer_timeout 1800000" in rabbit["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    for name in ("api", "worker", "beat", "flower"):
        # Unset (empty) unless the operator sets it: Redis stays the broker without the profile.
        assert services[name]["environment"]["WADISPATCH_BROKER_URL"] == "${WADISPATCH_BROKER_URL:-}", name
        assert services[name]["depends_on"]["rabbitmq"] == {"condition": "service_healthy", "required": False}
    assert Settings(broker_url="").broker_url is None
    header = (ROOT / "docker-compose.yml").read_text().split("x-app", 1)[0]
    url = header.split("WADISPATCH_BROKER_URL=", 1)[1].split()[0]
    user, password = rabbit["environment"]["RABBITMQ_DEFAULT_USER"], rabbit["environment"]["RABBITMQ_DEFAULT_PASS"]
    assert url == f"amqp://{user}:{password}@rabbitmq:5672/{rabbit['environment']['RABBITMQ_DEFAULT_VHOST']}"


def exported_names() -> set[str]:
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names.add(f"{value._name}_total")
        elif isinstance(value, Histogram):
            names.update(f"{value._name}_{suffix}" for suffix in ("bucket", "count", "sum"))
    snapshot = Snapshot(time.time(), {}, {}, None, [], {}, 0)
    names.update(family.name for family in _families(snapshot))
    return names


def test_the_dashboard_only_charts_metrics_we_export():
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/wadispatch.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(expressions) >= 20
    used = {name for expr in expressions for name in re.findall(r"\bwadispatch_[a-z_]+", expr)}
    assert used, expressions
    unknown = used - exported_names()
    assert not unknown, f"the dashboard charts metrics nobody exports: {sorted(unknown)}"
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p} == {uid}


def test_the_image_holds_every_package_the_project_installs():
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[(.*?)\]", pyproject)
    assert include is not None
    packages = {name.strip(' "*') for name in include.group(1).split(",")}
    # Every package of the checkout is installed but the tests and the benchmarks (run from a
    # checkout): one left out imports only from the repository's own folder, not from the image.
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == ours
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in packages:
        assert f"COPY {package} ./{package}" in dockerfile, package
