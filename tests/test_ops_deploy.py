"""Deploy artefacts: Grafana dashboards and provisioning, docker-compose stack, Dockerfile.

Checked for what would break a real deployment: dashboards out of date with
their generator or pointing at another datasource, compose services running
commands or flags `streambid` does not have, mounts of files that do not exist.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from bidder.cli import build_parser
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
GRAFANA = DEPLOY / "grafana"


def load_builder():
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def dashboard_files() -> list[Path]:
    return sorted((GRAFANA / "dashboards").glob("*.json"))


def test_committed_dashboards_are_what_the_generator_writes() -> None:
    builder = load_builder()
    generated = builder.dashboards()
    assert sorted(generated) == [p.name for p in dashboard_files()]
    for name, doc in generated.items():
        assert (GRAFANA / "dashboards" / name).read_text() == builder.render(doc), \
            f"{name} is stale: run python deploy/grafana/build_dashboards.py"


MONEY_METRICS = ("spend", "budget", "value", "ecpc", "ecpm", "ecpa")


def test_money_panels_carry_no_currency_unit_and_say_whose_currency() -> None:
    """Campaigns bid in eleven currencies and no metric says which: a `currencyUSD` unit put a dollar sign on euros
    and yen alike."""
    money = 0
    for path in dashboard_files():
        for p in json.loads(path.read_text())["panels"]:
            if p["type"] == "row":
                continue
            unit = p["fieldConfig"]["defaults"]["unit"]
            assert not unit.startswith("currency"), f"{path.name} / {p['title']}: unit {unit}"
            exprs = " ".join(t["expr"] for t in p["targets"])
            if unit != "percentunit" and any(f"_{m}" in exprs for m in MONEY_METRICS):
                money += 1
                assert "in the campaign's currency" in (p["title"] + " " + p["description"]).lower(), p["title"]
    assert money >= 6


def test_dashboards_use_the_provisioned_datasource_and_a_sane_layout() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    uids = {d["uid"] for d in ds if d["type"] == "prometheus"}
    uids_seen = set()
    for path in dashboard_files():
        doc = json.loads(path.read_text())
        panels = doc["panels"]
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        boxes = []
        for p in panels:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{path.name}: {p['title']} is outside the 24-column grid"
            boxes.append((g["x"], g["y"], g["w"], g["h"], p["title"]))
            if p["type"] == "row":
                continue
            assert p["datasource"]["uid"] in uids and p["targets"], p["title"]
            for t in p["targets"]:
                assert t["expr"].strip() and t["datasource"]["uid"] in uids
            uids_seen.add(p["datasource"]["uid"])
        for i, (x, y, w, h, title) in enumerate(boxes):
            for x2, y2, w2, h2, title2 in boxes[i + 1:]:
                assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y, f"{title} overlaps {title2}"
        for var in doc["templating"]["list"]:
            assert var["datasource"]["uid"] in uids and var["allValue"] == ".*"
    assert uids_seen == uids


def test_dashboard_provider_points_where_compose_mounts_the_dashboards() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "streambid.yml").read_text())["providers"][0]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_runs_commands_streambid_has() -> None:
    services = compose()["services"]
    parser = build_parser()
    ran = set()
    for name, svc in services.items():
        image = svc.get("image", "")
        if image != "streambid:local":
            continue
        cmd = [c.replace("${STREAMBID_NOTICE_BASE:-http://localhost:8080}", "http://localhost:8080") for c in svc["command"]]
        args = parser.parse_args(cmd)  # exits (SystemExit) on an unknown command or flag
        assert callable(args.func), name
        ran.add(cmd[0])
    assert {"serve", "worker", "campaign"} <= ran


def test_compose_stack_is_complete_and_its_files_exist() -> None:
    doc = compose()
    services = doc["services"]
    assert services["kafka"]["image"] == "apache/kafka:4.0.0"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert {"kafka", "campaigns", "worker", "bidder", "prometheus", "alertmanager", "grafana"} <= set(services)
    build = services["campaigns"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name} mounts {src}, which does not exist"
            else:
                assert src in doc["volumes"], f"{name} uses undeclared volume {src}"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"
    assert "--workers" in services["bidder"]["command"]
    # what a bidder holds on disk while Kafka is away (billing among it) must outlive the container
    bidder = services["bidder"]["command"]
    spill = bidder[bidder.index("--spill-dir") + 1]
    assert any(vol.split(":")[1] == spill and not vol.startswith(".") for vol in services["bidder"]["volumes"])
    # Prometheus scrapes the worker by name: sharing the worker's network namespace, it lost its network each time
    # the worker container restarted (Docker does not re-attach containers that joined a namespace)
    assert "network_mode" not in services["prometheus"] and "9090:9090" in services["prometheus"]["ports"]
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in prom["scrape_configs"]}
    assert targets["streambid-worker"] == ["worker:9102"] and targets["streambid-bidder"] == ["bidder:8080"]
    worker = services["worker"]["command"]
    assert worker[worker.index("--metrics-port") + 1] == "9102" and worker[worker.index("--metrics-host") + 1] == "0.0.0.0"
    assert "ports" not in services["worker"]  # /status and /metrics stay inside the stack
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [d["url"] for d in ds if d["type"] == "prometheus"] == ["http://prometheus:9090"]


def test_compose_requires_the_secret_and_the_salt_and_the_readme_sets_both() -> None:
    """A default salt is public: anyone could reverse the user-id hashes in events and frequency caps."""
    env = compose()["x-streambid"]["environment"]
    docker_steps = (ROOT / "README.md").read_text().split("### The whole stack in Docker", 1)[1].split("```", 2)[1]
    for var in ("STREAMBID_SECRET", "STREAMBID_SALT"):
        assert env[var].startswith("${" + var + ":?"), f"{var} must be required (${{{var}:?message}}), not defaulted"
        assert f"export {var}=" in docker_steps, f"README's Docker steps do not set {var}"


def test_compose_kafka_keeps_its_data_on_the_volume() -> None:
    """Without KAFKA_LOG_DIRS the image writes to /tmp/kraft-combined-logs, lost when the container is recreated."""
    kafka = compose()["services"]["kafka"]
    mounted = {vol.split(":")[1] for vol in kafka["volumes"] if not vol.startswith(".")}
    assert kafka["environment"]["KAFKA_LOG_DIRS"] in mounted


def test_alerts_go_to_the_compose_alertmanager() -> None:
    """Prometheus had no `alerting:` section and the stack no Alertmanager: no alert reached anyone."""
    services = compose()["services"]
    am = services["alertmanager"]
    assert am["image"].startswith("prom/alertmanager:")
    assert "alertmanager" in services["prometheus"]["depends_on"]
    config = next(vol for vol in am["volumes"] if vol.startswith("./")).split(":")
    flag = next(arg for arg in am["command"] if arg.startswith("--config.file="))
    path = DEPLOY / config[0] / Path(flag.split("=", 1)[1]).relative_to(config[1])
    doc = yaml.safe_load(path.read_text())
    receivers = {r["name"] for r in doc["receivers"]}
    assert doc["route"]["receiver"] in receivers
    assert all(r.get("receiver", doc["route"]["receiver"]) in receivers for r in doc["route"].get("routes", []))
    port = next(arg for arg in am["command"] if arg.startswith("--web.listen-address=")).rsplit(":", 1)[1]
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for am_cfg in prom["alerting"]["alertmanagers"] for sc in am_cfg["static_configs"] for t in sc["targets"]]
    assert targets == [f"alertmanager:{port}"]
    amtool = shutil.which("amtool")  # deploy/prometheus/ensure-prometheus.sh installs it for `make test`
    assert amtool is not None, "amtool is missing: run bash deploy/prometheus/ensure-prometheus.sh"
    out = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_copies_every_package_and_runs_streambid() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    for pkg in ("bidder", "streams", "models", "loadtest"):
        assert f"COPY {pkg} {pkg}" in text
        assert f"!{pkg}/**" in (DEPLOY / "Dockerfile.dockerignore").read_text()
    assert 'ENTRYPOINT ["streambid"]' in text and "USER streambid" in text
    assert (ROOT / "deploy" / "campaigns.example.json").exists()


def test_dockerfile_copies_the_files_the_package_build_names() -> None:
    """pyproject's readme and license files must reach the image's build, or `pip install .` fails there."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    named = [project["readme"], *project.get("license-files", [])]
    assert "LICENSE" in named and (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    copied = next(line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if "pyproject.toml" in line)
    allowed = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for name in named:
        assert (ROOT / name).is_file()
        assert name in copied.split() and f"!{name}" in allowed, name


def test_dockerfile_copies_only_what_the_build_context_lets_through() -> None:
    """A COPY of a file the .dockerignore leaves out fails the image build, which nothing here runs."""
    allowed = [line[1:] for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if line.startswith("!")]
    copies = [line.split()[1:-1] for line in (DEPLOY / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ") and "--from=" not in line]
    sources = [src for srcs in copies for src in srcs]
    assert "deploy/constraints.txt" in sources
    for src in sources:
        assert src in allowed or f"{src}/**" in allowed, src
        assert (ROOT / src).exists(), src


def test_constraints_pin_every_dependency_within_its_declared_range() -> None:
    """`make` and the image install the pinned versions: each must exist for every requirement and satisfy it,
    or pip refuses the install (a fresh clone's `make test` would fail before running anything)."""
    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return name.lower().replace("_", "-").replace(".", "-")

    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not a pin: {line}"
            pins[norm(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    for text in required:
        req = Requirement(text)
        assert norm(req.name) in pins, f"{req.name} has no pin in deploy/constraints.txt"
        assert req.specifier.contains(pins[norm(req.name)]), f"{req.name}=={pins[norm(req.name)]} is outside {req.specifier}"
    for recipe in (ROOT / "Makefile", DEPLOY / "Dockerfile"):
        installs = [line for line in recipe.read_text().splitlines() if "pip install" in line and "--upgrade pip" not in line]
        assert installs and all("-c deploy/constraints.txt" in line for line in installs), recipe.name


def test_docker_compose_config_accepts_the_stack() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the `docker compose` plugin is not installed (the docker CLI alone cannot validate compose files)")
    env = {**os.environ, "STREAMBID_SECRET": "test-only", "STREAMBID_SALT": "test-only"}
    out = subprocess.run([docker, "compose", "-f", str(DEPLOY / "docker-compose.yml"), "--profile", "traffic", "config",
                          "--services"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) == set(compose()["services"])
    for var in ("STREAMBID_SECRET", "STREAMBID_SALT"):
        missing = subprocess.run([docker, "compose", "-f", str(DEPLOY / "docker-compose.yml"), "config"],
                                 capture_output=True, text=True, env={k: v for k, v in env.items() if k != var}, timeout=60)
        assert missing.returncode != 0 and var in missing.stderr


def test_kafka_sh_will_not_start_a_broker_it_could_not_write_down(tmp_path: Path) -> None:
    """A state path it cannot write (here a directory) is refused before any broker starts: a broker whose pid is
    not in the state file could never be stopped by `kafka.sh stop`."""
    java_home = tmp_path / "jdk"
    (java_home / "bin").mkdir(parents=True)
    java = java_home / "bin" / "java"
    java.write_text("#!/bin/sh\necho started >> \"$(dirname \"$0\")/runs\"\n")
    java.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    out = subprocess.run(["bash", str(DEPLOY / "kafka-local" / "kafka.sh"), "start"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL,
                         env={**os.environ, "JAVA_HOME": str(java_home), "STREAMBID_KAFKA_STATE": str(state)})
    assert out.returncode == 1 and "cannot write the state file" in out.stderr, out.stderr
    assert not (java_home / "bin" / "runs").exists()  # java never ran
