"""Privacy by default: a losstune job opens no connection beyond the machines it was given.

Ray and MLflow both phone home unless told not to:

- MLflow 3.x sends anonymous usage events (``mlflow/telemetry``: MLflow version, Python version, OS,
  which APIs were called, an installation id) to the address named by its configuration, which its
  client fetches from ``config.mlflow-telemetry.io`` as soon as ``mlflow`` is imported. Off with
  ``MLFLOW_DISABLE_TELEMETRY=true``, which must be set before that import.
- Ray's usage stats (``ray/_common/usage``: Ray and Python versions, OS, cluster size and resources,
  which Ray libraries were used, the cloud provider) go to ``https://usage-stats.ray.io/`` from the
  dashboard of a cluster started with ``ray start`` (release wheels never send them from a runtime
  ``ray.init`` starts). Off with ``RAY_USAGE_STATS_ENABLED=0``.
- Whether on or off, the dashboard's ``UsageStatsHead`` asks the Azure, GCP and AWS instance-metadata
  services which cloud it runs on (see :func:`local_runtime_without_probes`).

Every losstune command therefore starts with :func:`apply`: it sets ``RAY_USAGE_STATS_ENABLED=0`` and
``MLFLOW_DISABLE_TELEMETRY=true`` in its own environment (which Ray's processes and MLflow inherit)
unless the user opts in with ``losstune --allow-telemetry`` or ``LOSSTUNE_ALLOW_TELEMETRY=1``. A value
the user set explicitly is kept: ``RAY_USAGE_STATS_ENABLED=1`` is an opt-in to Ray's statistics alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from trainables.errors import UserError

__all__ = ["ALLOW_ENV", "QUIET_ENV", "apply", "telemetry_allowed", "job_env", "local_runtime_without_probes"]

ALLOW_ENV = "LOSSTUNE_ALLOW_TELEMETRY"
# What "off" means, for losstune's own processes and for the runtime env of a submitted job.
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
_YES, _NO = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def telemetry_allowed() -> bool:
    """Whether the user opted in to Ray's and MLflow's statistics (``LOSSTUNE_ALLOW_TELEMETRY``)."""
    value = os.environ.get(ALLOW_ENV, "").strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise UserError(f"{ALLOW_ENV}='{os.environ[ALLOW_ENV]}' is neither 1 nor 0; set it to 1 to let Ray and MLflow "
                    "send their usage statistics, or unset it")


def apply(*, allow: bool = False) -> bool:
    """Set the privacy defaults in this process's environment, before Ray or MLflow is imported (MLflow
    reads its switch at import) and before Ray starts (its processes inherit the environment).
    ``allow`` is ``--allow-telemetry``: it is written to ``LOSSTUNE_ALLOW_TELEMETRY`` so that the
    processes this one starts, and a submitted job, make the same choice. Returns whether telemetry is
    allowed."""
    if allow:
        os.environ[ALLOW_ENV] = "1"
    if telemetry_allowed():
        return True
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    return False


def job_env() -> dict[str, str]:
    """The ``env_vars`` of a submitted job's runtime env: the privacy defaults, or the opt-in (the
    driver on the head then makes the same choice). Never a secret: anyone with dashboard access
    reads a job's runtime env."""
    return {ALLOW_ENV: "1"} if telemetry_allowed() else dict(QUIET_ENV)


@contextmanager
def local_runtime_without_probes() -> Iterator[None]:
    """Around ``ray.init(address="local", include_dashboard=False)``: start the runtime without the
    dashboard process that would only probe the cloud-metadata services.

    Why (Ray 2.60): a head node always starts ``ray/dashboard/dashboard.py``. With
    ``include_dashboard=False`` it loads one module only, ``UsageStatsHead``
    (``ray/_private/services.py``, ``start_api_server``: ``--modules-to-load=UsageStatsHead`` and
    ``--disable-frontend``, so no web server either). ``UsageStatsHead.run()``
    (``ray/dashboard/modules/usage_stats/usage_stats_head.py``) calls
    ``usage_lib.get_cluster_config_to_report()`` *before* it checks whether usage stats are enabled;
    without ``~/ray_bootstrap_config.yaml`` that calls ``get_cloud_from_metadata_requests()``
    (``ray/_common/usage/usage_lib.py``): HTTP requests to 169.254.169.254 (Azure, AWS) and
    metadata.google.internal (GCP). With usage stats off the process has nothing else to do, and Ray
    2.60 offers no setting that keeps it from starting or from loading that module (``include_dashboard``,
    ``--disable-usage-stats`` and ``RAY_USAGE_STATS_ENABLED=0`` all leave it running).

    So, the least invasive way that works: for the duration of this block, a head node's
    ``Node.start_api_server`` (``ray/_private/node.py``) leaves what Ray leaves for
    ``include_dashboard=False``, minus the process: an empty web UI URL, and in the GCS the two keys
    the process and Node would have written (the process's nominal address, which serves nothing
    without the frontend; the per-node agent's ``event_agent.py`` waits for it and would otherwise
    log a retry every second). Everything else of the runtime (GCS, raylet, the per-node dashboard
    agent, workers) starts as usual; a runtime with the dashboard asked for, or with usage stats on,
    is left alone, and so is everything once the user opts in. tests/tuner/test_privacy.py pins the
    Ray code this relies on and checks, with every process of a job instrumented, that no probe is made.
    """
    from ray._common.usage import usage_lib
    from ray._private import node as ray_node
    from ray._private import ray_constants

    original = getattr(ray_node.Node, "start_api_server", None)
    if original is None or telemetry_allowed() or usage_lib.usage_stats_enabled():
        yield  # a Ray that changed (the test says so), or the user's choice: Ray as it ships
        return

    def start_api_server(self, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
        if include_dashboard is not False:
            return original(self, include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)
        params = self._ray_params
        nominal = f"{params.dashboard_host}:{params.dashboard_port or ray_constants.DEFAULT_DASHBOARD_PORT}"
        self._webui_url = ""  # what services.start_api_server returns without the dashboard
        gcs = self.get_gcs_client()
        for key, value in ((ray_constants.DASHBOARD_ADDRESS.encode(), nominal), (b"webui:url", "")):
            gcs.internal_kv_put(key, value.encode(), True, ray_constants.KV_NAMESPACE_DASHBOARD)

    ray_node.Node.start_api_server = start_api_server
    try:
        yield
    finally:
        ray_node.Node.start_api_server = original
