"""docker-compose.yml: valid against the Compose Specification's JSON schema
(vendored in tests/schemas, see tests/schemas/README.md for its origin), and
built the way the deployment docs promise."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from rainstorm.errors import UsageError
from rainstorm.spec import parse_spec_text
from tests.composefile import (
    COMPOSE_FILE,
    ROOT,
    TEST_ENV,
    command_args,
    dockerfile,
    interpolate,
    load_compose,
)

DATA = Path(__file__).resolve().parent.parent / "schemas"
SCHEMA = DATA / "compose-spec.json"
RAINSTORM_SERVICES = ("coordinator", "worker", "dashboard", "autoscaler")


def _schema() -> dict[str, Any]:
    recorded = re.search(r"sha256: `([0-9a-f]{64})`", (DATA / "README.md").read_text())
    assert recorded, "tests/schemas/README.md must record the schema's sha256"
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == recorded.group(1)
    schema: dict[str, Any] = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert schema["title"] == "Compose Specification"
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


@pytest.mark.parametrize("env", [None, {}, TEST_ENV], ids=["raw", "defaults", "test-env"])
def test_valid_against_compose_spec_schema(env: dict[str, str] | None) -> None:
    validator = jsonschema.Draft7Validator(_schema())
    errors = sorted(validator.iter_errors(load_compose(env)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_catches_mistakes() -> None:
    validator = jsonschema.Draft7Validator(_schema())
    bad = load_compose({})
    bad["services"]["worker"]["deploy"]["replica"] = 2  # typo
    bad["services"]["redis"]["healthcheck"]["interval"] = 2  # not a duration string
    assert len(list(validator.iter_errors(bad))) >= 2


def test_redis_service() -> None:
    compose = load_compose()
    redis = compose["services"]["redis"]
    assert redis["image"] == "${RAINSTORM_VALKEY_IMAGE:-valkey/valkey:8.1}"
    assert interpolate(redis["image"], {}) == "valkey/valkey:8.1"
    cmd = redis["command"]
    assert cmd[0] == "valkey-server"
    assert command_args(cmd, "--appendonly") == ["yes"]
    assert command_args(cmd, "--appendfsync") == ["everysec"]
    assert command_args(cmd, "--maxmemory-policy") == ["noeviction"]
    assert command_args(cmd, "--maxmemory") == ["${RAINSTORM_REDIS_MAXMEMORY:-1gb}"]
    assert command_args(interpolate(cmd, {}), "--maxmemory") == ["1gb"]
    assert command_args(interpolate(cmd, {"RAINSTORM_REDIS_MAXMEMORY": "4gb"}),
                        "--maxmemory") == ["4gb"]
    # the data directory is a named volume, declared at the top level
    data_dir = command_args(cmd, "--dir")[0]
    named = {v.split(":")[0] for v in redis["volumes"] if v.split(":")[1] == data_dir}
    assert named and named <= set(compose["volumes"])
    health = redis["healthcheck"]
    assert health["test"][:2] == ["CMD", "valkey-cli"] and health["test"][-1] == "ping"
    assert "-e" in health["test"], "valkey-cli exits 0 on an error reply unless given -e"
    assert redis.get("restart") == "unless-stopped"


def test_passwords_come_from_variables() -> None:
    raw = COMPOSE_FILE.read_text(encoding="utf-8")
    compose = load_compose()
    cmd = compose["services"]["redis"]["command"]
    assert command_args(cmd, "--requirepass") == ["${RAINSTORM_REDIS_PASSWORD:-change-me}"]
    assert ">${RAINSTORM_WORKER_PASSWORD:-change-me-too}" in command_args(cmd, "--user")
    url = re.compile(r"^redis://(?P<user>\w+):\$\{(?P<var>RAINSTORM_\w+_PASSWORD)(:-[^}]*)?\}"
                     r"@redis:6379/0$")
    users = {}
    for name in RAINSTORM_SERVICES:
        m = url.match(compose["services"][name]["environment"]["RAINSTORM_REDIS"])
        assert m, f"{name}: RAINSTORM_REDIS must take its password from a variable"
        users[name] = (m["user"], m["var"])
    assert users["coordinator"] == ("default", "RAINSTORM_REDIS_PASSWORD")
    assert users["worker"] == ("worker", "RAINSTORM_WORKER_PASSWORD")
    assert users["dashboard"] == ("worker", "RAINSTORM_WORKER_PASSWORD")
    # with the variables set, no default password is left anywhere, and the
    # admin password reaches only the server and the coordinator
    resolved = load_compose(TEST_ENV)
    assert "change-me" not in json.dumps(resolved)
    admin = TEST_ENV["RAINSTORM_REDIS_PASSWORD"]
    holders = {n for n, s in resolved["services"].items() if admin in json.dumps(s)}
    assert holders == {"redis", "coordinator"}
    assert "change-me" in raw  # the documented development defaults


def test_worker_acl_rules() -> None:
    rules = command_args(load_compose()["services"]["redis"]["command"], "--user")
    assert rules[:2] == ["worker", "on"]
    keyrules = [r for r in rules if r.startswith(("~", "%", "allkeys"))]
    assert keyrules[0] == "%R~rs:*" and "allkeys" not in keyrules
    assert all(r.startswith("~rs:") and r != "~rs:*" for r in keyrules[1:]), keyrules
    assert "nopass" not in rules and "+@all" not in rules and "allcommands" not in rules
    assert "resetchannels" in rules and "allchannels" not in rules
    grants = [r for r in rules if r[0] in "+-"]
    assert grants[0] == "-@all"
    for forbidden in ("+@scripting", "+eval", "+evalsha", "+script", "+function", "+@admin",
                      "+config", "+flushall", "+flushdb", "+keys", "+shutdown", "+acl",
                      "+@dangerous", "+debug", "+module"):
        assert forbidden not in (g.lower() for g in grants), forbidden
    # left to right: @dangerous is removed after every category grant, and
    # only INFO is given back after that
    dangerous = grants.index("-@dangerous")
    assert all(not g.startswith("+@") for g in grants[dangerous:])
    assert grants[dangerous + 1:] == ["+info"]
    for needed in ("+fcall", "+fcall_ro", "+multi", "+exec", "+xreadgroup", "+xautoclaim",
                   "+xack", "+xadd"):
        assert needed in grants


def test_rainstorm_services() -> None:
    compose = load_compose()
    services = compose["services"]
    # one build (the `sample` service's), one image; nobody pulls it
    builders = [n for n, s in services.items() if "build" in s]
    assert builders == ["sample"], "one image, built once, for every service"
    assert services["sample"]["build"] == {
        "context": ".", "args": {"BASE_IMAGE": "${RAINSTORM_BASE_IMAGE:-python:3.11-slim}"}}
    images = {services[n].get("image") for n in (*RAINSTORM_SERVICES, "sample")}
    assert images == {"rainstorm:local"}
    for name in RAINSTORM_SERVICES:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["pull_policy"] == "never"
    worker = services["worker"]
    assert worker["command"] == ["worker"]
    assert "container_name" not in worker and "ports" not in worker, \
        "`docker compose up --scale worker=N` needs neither"
    assert worker["restart"] == "unless-stopped" and worker["deploy"]["replicas"] >= 1
    coord = services["coordinator"]
    assert coord["command"] == ["submit", "--shared-fs"]
    assert coord["depends_on"]["sample"]["condition"] == "service_completed_successfully"
    assert set(coord["environment"]) >= {"RAINSTORM_REDIS", "RAINSTORM_SPEC",
                                         "RAINSTORM_SPEC_YAML", "RAINSTORM_INPUT",
                                         "RAINSTORM_JOB", "RAINSTORM_SECRET"}
    # signed specs: the coordinator signs with the key the workers verify with
    assert coord["environment"]["RAINSTORM_SECRET"] == worker["environment"]["RAINSTORM_SECRET"]
    dash = services["dashboard"]
    assert dash["command"][:1] == ["ui"]
    port = dash["command"][dash["command"].index("--port") + 1]
    assert any(str(p).split(":")[-1] == port for p in dash["ports"])
    assert any(str(p).startswith("127.0.0.1:${RAINSTORM_UI_PORT:-8080}:")
               for p in dash["ports"])
    assert all("container_name" not in s for s in services.values())
    # a network per project: no fixed name shared by every stack on the engine
    assert "name" not in (compose.get("networks") or {}).get("default", {})
    scaler = services["autoscaler"]
    assert scaler["profiles"] == ["autoscale"], "the Docker socket only when asked for"
    assert scaler["environment"]["RAINSTORM_SECRET"] == coord["environment"]["RAINSTORM_SECRET"]
    image_arg = scaler["command"][scaler["command"].index("--image") + 1]
    network_arg = scaler["command"][scaler["command"].index("--network") + 1]
    volume_arg = scaler["command"][scaler["command"].index("--volume") + 1]
    assert image_arg == worker["image"]
    # what compose names this project's network and `data` volume
    assert interpolate(network_arg, {"COMPOSE_PROJECT_NAME": "p1"}) == "p1_default"
    assert interpolate(volume_arg, {"COMPOSE_PROJECT_NAME": "p1"}) == "p1_data:/work/data"
    assert "/var/run/docker.sock:/var/run/docker.sock" in scaler["volumes"]


def test_one_data_volume_for_coordinator_and_workers() -> None:
    """The input is one filesystem, at one path, in the sample writer, the
    coordinator and every worker (splits), a named volume unless
    RAINSTORM_DATA names a host directory."""
    workdir = dockerfile()["workdir"]
    for env, source in (({}, "data"), ({"RAINSTORM_DATA": "./mine"}, "./mine")):
        services = load_compose(env)["services"]
        for name in ("sample", "coordinator", "worker"):
            mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
            assert mounts[f"{workdir}/data"] == source, name
    assert "data" in load_compose()["volumes"]
    sample = load_compose({})["services"]["sample"]
    assert sample["entrypoint"] == ["python", "-m", "rainstorm.samples"]
    out = sample["command"][sample["command"].index("--out") + 1]
    assert out == "data/sample" and sample["restart"] == "no"


def test_coordinator_mounts_and_default_spec() -> None:
    """The default spec lies in a mounted directory, at the path the
    container's working directory gives it, and names the data the
    `sample` service writes into the mounted data volume."""
    services = load_compose({})["services"]
    coord = services["coordinator"]
    workdir = dockerfile()["workdir"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in coord["volumes"]}
    spec_in_container = Path(workdir) / coord["environment"]["RAINSTORM_SPEC"]
    host = next(ROOT / src / spec_in_container.relative_to(dst)
                for dst, src in mounts.items() if spec_in_container.is_relative_to(dst))
    assert host.is_file(), host
    paths = parse_spec_text(host.read_text(), str(host)).source.paths
    sample = services["sample"]["command"]
    written = Path(workdir) / sample[sample.index("--out") + 1]
    assert paths and all(Path(workdir, p).parent == written for p in paths), paths
    assert any(written.is_relative_to(d) for d in mounts)


def test_dockerfile_and_dockerignore() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim\s*$", text, re.M)
    # a build stage with the compiler, then the image from the same base
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS build\s*$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}\s*$", text, re.M)
    build, image = text.split("\nFROM ${BASE_IMAGE}\n")
    assert re.search(r'^RUN pip wheel --wheel-dir /wheels "\.\[docker\]"(\s|$)', build, re.M), \
        "the package and the Docker SDK (autoscaler), no dev extras"
    assert "assert native.AVAILABLE" in build, "the build fails if the C code did not compile"
    assert re.search(r'^RUN pip install --no-index --find-links /wheels "rainstorm\[docker\]"',
                     image, re.M)
    assert "gcc" not in image, "no compiler in the image"
    for line in text.splitlines():
        if "pip install" in line or "pip wheel" in line:
            assert "dev" not in line, line
    assert dockerfile()["entrypoint"] == ["rainstorm"]
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "data", ".git", ".env", "experiments/results", ".pytest_cache",
            ".mypy_cache"} <= ignored


@pytest.mark.parametrize("text, env, expected", [
    ("${A:-x}", {}, "x"), ("${A:-x}", {"A": ""}, "x"), ("${A-x}", {"A": ""}, ""),
    ("${A-x}", {"A": "v"}, "v"), ("$A/${B}", {"A": "1", "B": "2"}, "1/2"),
    ("$$A", {"A": "1"}, "$A"), ("${A:+y}", {"A": "1"}, "y"), ("${A:+y}", {}, ""),
    (">${A:-p w}", {}, ">p w"),
])
def test_interpolation(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected


def test_interpolation_errors() -> None:
    with pytest.raises(ValueError, match="required"):
        interpolate("${A:?set A}", {})
    with pytest.raises(ValueError, match="invalid"):
        interpolate("a $ b", {})


def test_parse_spec_text() -> None:
    yaml_text = "name: inline\npipeline: [{op: flat_map, fn: split_words}, {op: count}]\n"
    spec = parse_spec_text(yaml_text, "RAINSTORM_SPEC_YAML", ["settings.parallelism=3"])
    assert spec.name == "inline" and spec.settings.parallelism == 3
    as_json = json.dumps({"name": "j", "pipeline": [{"op": "count"}]})
    assert parse_spec_text(as_json, "x.json", json_text=True).name == "j"
    with pytest.raises(UsageError, match=r"^cannot parse spec RAINSTORM_SPEC_YAML: "):
        parse_spec_text("name: [", "RAINSTORM_SPEC_YAML")
    with pytest.raises(UsageError, match=r"^invalid spec RAINSTORM_SPEC_YAML: pipeline"):
        parse_spec_text("name: x", "RAINSTORM_SPEC_YAML")
    with pytest.raises(UsageError, match="expected a mapping"):
        parse_spec_text("- a", "env")
