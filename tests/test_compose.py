"""docker-compose.temporal.yml, checked the way an operator would before `up`.

No Docker engine is needed: the file is read with PyYAML, and the search-attribute job's
script is run by bash against a fake `temporal` CLI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dunning.config import Settings
from worker.search_attributes import SEARCH_ATTRIBUTES

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.temporal.yml"
REGISTRATION = "register-search-attributes"
SERVICES = {"postgresql", "temporal", "temporal-ui", REGISTRATION}
# What DESIGN.md promises ops can filter on.
DESIGN_ATTRIBUTES = {
    "SubscriptionId": "Keyword",
    "CustomerId": "Keyword",
    "DunningProvider": "Keyword",
    "DunningStage": "Keyword",
    "DunningCampaignStartedAt": "Datetime",
    "DunningOutcome": "Keyword",
}
IMAGE = re.compile(
    r"^(?P<repo>[a-z0-9][a-z0-9._/-]*):(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})(?:@sha256:[0-9a-f]{64})?$"
)
CREATE = re.compile(
    r"temporal operator search-attribute create --namespace (\S+) --name (\S+) --type (\S+)"
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {key: str(value) for key, value in raw.items()}


def published(service: dict[str, Any]) -> set[tuple[str, str]]:
    """(host port, container port) pairs, from short or long port syntax."""
    pairs = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            pairs.add((str(port.get("published", "")), str(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            pairs.add((parts[-2] if len(parts) > 1 else "", parts[-1]))
    return pairs


def condition(service: dict[str, Any], on: str) -> str | None:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return "service_started" if on in deps else None
    if on not in deps:
        return None
    return (deps[on] or {}).get("condition", "service_started")


def image(service: dict[str, Any]) -> re.Match[str]:
    match = IMAGE.match(service["image"])
    assert match, f"image {service['image']!r} is not repo:tag"
    return match


def raw_script(services: dict[str, Any]) -> str:
    command = services[REGISTRATION]["command"]
    # A string command would be split into words by compose; `bash -c` needs one argument.
    assert isinstance(command, list) and len(command) == 1, "command must be one script argument"
    return command[0]


def script(services: dict[str, Any]) -> str:
    """The script as the container receives it: compose turns `$$` into `$`."""
    return raw_script(services).replace("$$", "$")


# --- shape ------------------------------------------------------------------------------


def test_the_four_services_exist(services: dict[str, Any]) -> None:
    assert SERVICES <= set(services)


def test_every_image_is_pinned_and_none_is_latest(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert image(service)["tag"] != "latest", name
    assert not re.search(r":latest\b", COMPOSE.read_text())


def test_images_are_the_expected_products(services: dict[str, Any]) -> None:
    assert image(services["postgresql"])["repo"] == "postgres"
    assert image(services["temporal"])["repo"] == "temporalio/auto-setup"
    assert image(services["temporal-ui"])["repo"] == "temporalio/ui"
    assert image(services[REGISTRATION])["repo"] == "temporalio/admin-tools"


def test_admin_tools_match_the_server_release(services: dict[str, Any]) -> None:
    server = image(services["temporal"])["tag"]
    tools = image(services[REGISTRATION])["tag"]
    assert tools == server or tools.startswith(f"{server}-"), (server, tools)


def test_ports(services: dict[str, Any]) -> None:
    assert ("7233", "7233") in published(services["temporal"])
    assert ("8233", "8080") in published(services["temporal-ui"])  # same UI port as `dunning dev`
    assert not published(services["postgresql"]), "the database is for Temporal only"


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    long_running = {name for name, s in services.items() if s.get("restart") != "no"}
    assert {"postgresql", "temporal", "temporal-ui"} <= long_running
    for name in long_running:
        check = services[name].get("healthcheck") or {}
        assert not check.get("disable"), name
        test = check.get("test")
        if isinstance(test, list):
            assert test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1 and all(test[1:]), name
        else:
            assert isinstance(test, str) and test.strip() and test != "NONE", name
    assert "pg_isready" in str(services["postgresql"]["healthcheck"]["test"])
    assert "temporal operator cluster health" in str(services["temporal"]["healthcheck"]["test"])
    assert "/healthz" in str(services["temporal-ui"]["healthcheck"]["test"])


def test_start_order_waits_for_health(services: dict[str, Any]) -> None:
    assert condition(services["temporal"], "postgresql") == "service_healthy"
    assert condition(services["temporal-ui"], "temporal") == "service_healthy"
    assert condition(services[REGISTRATION], "temporal") == "service_healthy"


def test_temporal_persists_to_the_postgresql_service(compose: dict[str, Any], services: dict[str, Any]) -> None:
    temporal, pg = env(services["temporal"]), env(services["postgresql"])
    assert temporal["DB"] == "postgres12"
    assert temporal["POSTGRES_SEEDS"] == "postgresql"
    assert temporal["DB_PORT"] == "5432"
    assert temporal["POSTGRES_USER"] == pg["POSTGRES_USER"]
    assert temporal["POSTGRES_PWD"] == pg["POSTGRES_PASSWORD"]
    assert pg["POSTGRES_DB"]
    sources = [v.split(":")[0] for v in services["postgresql"]["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert sources and sources[0] in (compose.get("volumes") or {}), "data must live in a named volume"


def test_clients_reach_temporal_by_service_name(services: dict[str, Any]) -> None:
    assert env(services["temporal-ui"])["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env(services[REGISTRATION])["TEMPORAL_ADDRESS"] == "temporal:7233"


def test_engine_defaults_point_at_this_stack(services: dict[str, Any]) -> None:
    fields = Settings.model_fields
    host_port = {host for host, _ in published(services["temporal"])}
    assert fields["temporal_address"].default.rsplit(":", 1)[1] in host_port
    assert fields["temporal_namespace"].default == env(services["temporal"])["DEFAULT_NAMESPACE"]


# --- search-attribute registration ------------------------------------------------------


def test_registration_is_a_one_shot_job(services: dict[str, Any]) -> None:
    job = services[REGISTRATION]
    assert job["restart"] == "no"  # the string: a bare `no` in YAML is False
    assert not published(job)
    assert job["entrypoint"][-1] == "-c"  # the image's own entrypoint just sleeps forever
    raw_script(services)


def test_registers_exactly_the_engine_search_attributes(services: dict[str, Any]) -> None:
    creates = CREATE.findall(script(services))
    namespace = env(services["temporal"])["DEFAULT_NAMESPACE"]
    assert {ns for ns, _, _ in creates} == {namespace}
    names = [name for _, name, _ in creates]
    assert len(names) == len(set(names)), names
    registered = {name: kind for _, name, kind in creates}
    assert registered == SEARCH_ATTRIBUTES
    assert registered == DESIGN_ATTRIBUTES


def test_script_has_no_dollar_compose_would_eat(services: dict[str, Any]) -> None:
    # Compose interpolates `$x` in the file; a shell variable must be written `$$x`.
    assert "$" not in raw_script(services).replace("$$", "")


FAKE_TEMPORAL = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$*" in
  "operator search-attribute list"*)
    [ "$FAKE_MODE" != not-ready ] && exit 0
    echo "Error: Namespace default is not found." >&2; exit 1 ;;
  "operator search-attribute create"*)
    case "$FAKE_MODE" in
      exists) echo "Error: unable to add search attributes: Search attribute X already exists." >&2; exit 1 ;;
      conflict) echo "Error: search attribute X already exists and has different type Text" >&2; exit 1 ;;
      down) echo "Error: failed reaching server: connection refused" >&2; exit 1 ;;
      *) echo "Search attributes have been added"; exit 0 ;;
    esac ;;
esac
echo "unexpected call: $*" >&2
exit 2
"""


def run_registration(services: dict[str, Any], tmp_path: Path, mode: str) -> tuple[int, list[str]]:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not available")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "temporal").write_text(FAKE_TEMPORAL)
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    environ = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_LOG": str(log),
        "FAKE_MODE": mode,
    }
    done = subprocess.run([bash, "-c", script(services)], env=environ, capture_output=True, text=True, timeout=60)
    return done.returncode, log.read_text().splitlines()


def created(calls: list[str]) -> dict[str, str]:
    pairs = [re.search(r"--name (\S+) --type (\S+)", c) for c in calls if c.startswith("operator search-attribute create")]
    return {m[1]: m[2] for m in pairs if m}


def test_registration_script_creates_every_attribute(services: dict[str, Any], tmp_path: Path) -> None:
    code, calls = run_registration(services, tmp_path, "fresh")
    assert code == 0
    assert calls[0].startswith("operator search-attribute list --namespace default")
    assert created(calls) == SEARCH_ATTRIBUTES


def test_registration_script_is_idempotent(services: dict[str, Any], tmp_path: Path) -> None:
    code, calls = run_registration(services, tmp_path, "exists")
    assert code == 0
    assert created(calls) == SEARCH_ATTRIBUTES  # kept going past each "already exists"


@pytest.mark.parametrize("mode", ["conflict", "down"])
def test_registration_script_fails_on_real_errors(services: dict[str, Any], tmp_path: Path, mode: str) -> None:
    code, _ = run_registration(services, tmp_path, mode)
    assert code != 0


def test_registration_script_gives_up_when_the_namespace_never_appears(
    services: dict[str, Any], tmp_path: Path
) -> None:
    code, calls = run_registration(services, tmp_path, "not-ready")
    assert code != 0
    assert not created(calls)
