"""What a person reads in MLflow's UI, checked in a real browser: `losstune ui` starts `mlflow server`
on a job's store and prints the addresses; headless Chromium (Debian's `chromium`, driven over the
DevTools protocol on a pipe: no browser download, no extra Python package) opens the experiment's
runs and the job's run and reads them as a person would. Screenshots of each page are kept in the
test's temporary folder (``screenshots/``).

The rest: the datasets and descriptions losstune records, and `losstune ui`'s bad input."""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.tuner.conftest import SEARCH_ONLY, SMALL, accepts, free_port, run_cli

CHROMIUM_MISSING = ("chromium is not installed: `apt-get install -y chromium` (Debian's package; .ci/run installs "
                    "it when it is missing)")


# --------------------------------------------------------------------------- a browser, over a pipe
class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    NUL-separated JSON on file descriptors 3 and 4), with a fresh profile: a first visit, as a new
    user makes it (MLflow's UI keeps its GenAI/model-training mode in the profile's localStorage)."""

    def __init__(self, *, width: int = 1600, height: int = 1000, timeout_s: float = 60.0) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.fail(CHROMIUM_MISSING)
        self.timeout_s = timeout_s
        self.profile = tempfile.mkdtemp(prefix="losstune-chromium-")
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()

        def on_fds_3_and_4() -> None:  # in the child: the protocol's pipe where Chromium looks for it
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)  # neither dup2 may overwrite the other's source
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "--no-first-run",
             "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars", f"--window-size={width},{height}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=on_fds_3_and_4, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf, self._id = b"", 0
        target = self._call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self._call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._r], [], [], left)[0]:
                    raise TimeoutError(f"chromium did not answer {method} within {self.timeout_s:.0f} s")
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe (exit status {self.proc.poll()})")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:  # anything else is an event nobody asked for
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self._call(method, self._session, **params)

    def js(self, expression: str) -> Any:
        r = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, url: str) -> None:
        self.page("Page.navigate", url=url)

    def text(self) -> str:
        """What a person reads: the page's rendered text."""
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, *needles: str, timeout_s: float = 90.0) -> str:
        """The page's text once it shows every one of ``needles`` (the UI renders as its requests answer)."""
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(0.3)
        missing = [n for n in needles if n not in text]
        pytest.fail(f"the page never showed {missing}; it showed:\n{text[:3000]}")

    def click(self, selector: str) -> int:
        """Click every element that matches the CSS selector; how many there were."""
        return self.js(f"(() => {{ const e = [...document.querySelectorAll({json.dumps(selector)})]; "
                       "e.forEach(x => x.click()); return e.length; })()")

    def screenshot(self, path: Path) -> Path:
        time.sleep(0.5)  # let the last render settle
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        try:
            self._call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._r, self._w):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


class _Lines:
    """A process's stdout, line by line, with a deadline (a reader thread: no read blocks the test)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.put(line)

    def until(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            m = re.search(pattern, line)
            if m:
                return m
        pytest.fail(f"no line matching {pattern!r} within {timeout_s:.0f} s; got: {''.join(self.seen)}")


# --------------------------------------------------------------------------- the browser test
@pytest.mark.slow
def test_a_person_reads_the_job_in_mlflows_ui(tmp_path, shared_ray, capsys):
    """A new user's path: a job, `losstune ui`, the printed addresses in a browser: the experiment opens
    on its runs (not MLflow's GenAI overview), with the job and, under it, its trials and the datasets;
    the job's page says the verdict, the winner's held-out metrics, the datasets and its trials."""
    from mlflow import MlflowClient

    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        pytest.fail(CHROMIUM_MISSING)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc, out, err = run_cli(["tune", "--data", SMALL, "--num-trials", "3", "--max-epochs", "2", "--grace-period", "2",
                            "--storage-path", str(tmp_path / "results"), "--tracking-uri", uri,
                            "--target-auroc", "0.8", "--target-auprc", "0.3", *SEARCH_ONLY], capsys)
    assert rc == 0, err
    assert "\n  open it: losstune ui\n" in out  # the store is the default one (MLFLOW_TRACKING_URI) here
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("losstune")
    [job] = c.search_runs([exp.experiment_id], filter_string="tags.`losstune.role` = 'job'")
    trials = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{job.info.run_id}'")
    assert len(trials) == 3
    m = job.data.metrics

    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "tuner.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
    shots = tmp_path / "screenshots"
    browser = None
    try:
        lines = _Lines(ui)
        runs_url = lines.until(r"experiment 'losstune' .*: (http://\S+)", 180).group(1)
        job_url = lines.until(r"latest job .*: (http://\S+)", 10).group(1)
        base = f"http://127.0.0.1:{port}"
        mode = "?workflowType=machine_learning"
        assert runs_url == f"{base}/#/experiments/{exp.experiment_id}/runs{mode}"
        assert job_url == f"{base}/#/experiments/{exp.experiment_id}/runs/{job.info.run_id}{mode}"

        browser = Chromium()
        # ---- the experiment: its table of runs, the job, and its trials under it
        browser.open(runs_url)
        text = browser.wait_for("Run Name", job.info.run_name)
        assert "Detect Issues" not in text and "Model training" in text  # the runs, not the GenAI overview
        assert job.info.run_name == f"job {job.data.tags['losstune.job']}"
        # a person expands the job's row (the "+" beside its name) to see its trials
        assert browser.click('button[data-component-id*="runnamecellrenderer"]') >= 1
        names = sorted(t.info.run_name for t in trials)
        assert all(re.fullmatch(r"trial \d \([0-9a-f]{8}\)", n) for n in names), names
        text = browser.wait_for(*names)
        source = SMALL.split("?")[0]
        digest = f"{job.data.params['data.fingerprint']}.{job.data.params['data.split_fingerprint']}"
        for split in ("train", "validation", "test"):
            assert f"{source}/{split} ({digest})" in text  # the Datasets column
        assert "4 matching runs" in text
        browser.click('button[data-component-id="mlflow.assistant.chat_panel.close"]')  # as a person would
        browser.wait_for(*names)
        browser.screenshot(shots / "experiment-runs.png")

        # ---- the job's run: its description opens with the verdict; the datasets; its trials
        browser.open(job_url)
        verdict = (f"Targets {'met' if m['target.test_all_met'] else 'NOT met'} on the held-out test split: "
                   f"AUROC {m['test/auroc']:.4f}")
        text = browser.wait_for("Description", verdict, "Child runs", *names)
        assert f"{source}/train ({digest})" in text and "Datasets" in text
        browser.click('button[data-component-id="mlflow.assistant.chat_panel.close"]')
        # the description folds after its first lines: a person unfolds it
        assert browser.click('button[data-testid="show-comment-toggle"]') == 1
        text = browser.wait_for("Show less", "held-out test", "Spent:", "Run it again:")
        assert f"{m['test/auroc']:.4f}\t{m['test/auprc']:.4f}" in text  # the table: the winner on test
        assert re.search(r"Spent: 3 trials, \d+ s wall", text)
        links = dict(browser.js("[...document.querySelectorAll('a')].map(a => [a.getAttribute('href'), a.innerText])"))
        winner = c.get_run(job.data.tags["losstune.best_trial_run_id"])
        # "The winner is trial 1 (ab12cd34)": its run, as the runs table names it
        assert links.get(f"#/experiments/{exp.experiment_id}/runs/{winner.info.run_id}{mode}") == winner.info.run_name
        report = f"#/experiments/{exp.experiment_id}/runs/{job.info.run_id}/artifactPath/report.html{mode}"
        assert links.get(report) == "report.html"
        browser.js("[...document.querySelectorAll('h1,h2,h3,h4,span,div')].find(e => e.innerText === 'Description')"
                   ".scrollIntoView()")
        browser.screenshot(shots / "job-run.png")

        # ---- the winner's run: how it ended and whether it met the targets
        browser.open(f"{base}/#/experiments/{exp.experiment_id}/runs/{winner.info.run_id}{mode}")
        wm = winner.data.metrics
        text = browser.wait_for(winner.info.run_name, "Description",
                                f"Best epoch {int(wm['best/epoch'])}: validation AUROC {wm['best/val/auroc']:.4f}")
        assert ("Targets: met on validation" if wm["target.all_met"] else "Targets: not met on validation") in text
        browser.screenshot(shots / "winner-run.png")

        # ---- the report the description links to
        browser.open(f"{base}/{report}")
        browser.wait_for("report.html", "Artifacts")
        browser.screenshot(shots / "report.png")
    finally:
        if browser is not None:
            browser.close()
        if ui.poll() is None:
            os.kill(ui.pid, signal.SIGTERM)  # `losstune ui` stops its server and exits
        try:
            rc_ui = ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            raise
        print(f"screenshots: {shots}")
    assert rc_ui == 0, ui.stderr.read()
    assert not accepts(port)  # the server went with it
    assert sorted(p.name for p in shots.iterdir()) == ["experiment-runs.png", "job-run.png", "report.png",
                                                       "winner-run.png"]


# --------------------------------------------------------------------------- `losstune ui`, the rest
@pytest.mark.slow
def test_ui_on_a_server_starts_nothing_and_prints_addresses_without_credentials(mlflow_server, capsys):
    from mlflow import MlflowClient

    c = MlflowClient(mlflow_server)
    name = f"ui-{free_port()}"
    exp = c.create_experiment(name)
    run = c.create_run(exp, run_name=f"job {name}", tags={"losstune.role": "job", "losstune.job": name})
    secret = mlflow_server.replace("http://", "http://alice:hunter2secret@")
    rc, out, err = run_cli(["ui", "--tracking-uri", secret, "--experiment", name], capsys)
    assert rc == 0, err
    assert out.splitlines()[0] == f"MLflow UI at {mlflow_server}"
    assert f"{mlflow_server}/#/experiments/{exp}/runs/{run.info.run_id}?workflowType=machine_learning" in out
    assert f"{mlflow_server}/#/experiments/{exp}/runs?workflowType=machine_learning" in out
    assert "hunter2secret" not in out + err
    rc, out, err = run_cli(["ui", "--tracking-uri", secret, "--port", "5001"], capsys)
    assert rc == 2 and err.startswith("losstune: error: --port starts a local UI") and "hunter2" not in err


def test_ui_refuses_a_port_in_use(tmp_path, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).search_experiments()  # a store that exists
    capsys.readouterr()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, out, err = run_cli(["ui", "--tracking-uri", uri, "--port", str(port)], capsys)
    assert rc == 2, (out, err)
    assert err.strip().splitlines() == [f"losstune: error: port {port} on 127.0.0.1 is in use (Address already in "
                                        f"use); another MLflow UI? choose another with --port, e.g. --port {port + 1}"]


def test_ui_help_loads_no_heavy_module():
    from tests.tuner.test_cli_startup import _PROBE

    done = subprocess.run([sys.executable, "-c", _PROBE, "ui", "--help"], capture_output=True, text=True, timeout=120)
    loaded = next(ln for ln in done.stderr.splitlines() if ln.startswith("LOADED")).removeprefix("LOADED").strip()
    assert loaded == "" and "losstune ui --tracking-uri" in done.stdout


# --------------------------------------------------------------------------- what is recorded
def test_the_data_is_described_as_mlflow_datasets_without_its_rows():
    from trainables.data import prepare_data
    from tuner.record.records import dataset_records

    data = prepare_data(SMALL)
    records = dataset_records(data)
    assert [(r["name"], r["context"]) for r in records] == [("synthetic:rare/train", "train"),
                                                            ("synthetic:rare/validation", "validation"),
                                                            ("synthetic:rare/test", "test")]
    for r, split in zip(records, (data.train, data.val, data.test)):
        assert r["digest"] == f"{data.fingerprint}.{data.split_fingerprint}" and len(r["digest"]) <= 36
        profile = json.loads(r["profile"])
        assert profile["num_rows"] == len(split) and profile["positives.outcome"] == int(split.y.sum())
        cols = json.loads(r["schema"])["mlflow_colspec"]
        assert [c["name"] for c in cols] == [c["name"] for c in data.preprocessor.columns] + ["outcome"]
        kinds = {c["name"]: c["kind"] for c in data.preprocessor.columns}
        assert all(c["type"] == ("string" if kinds.get(c["name"]) == "categorical" else
                                 "long" if c["name"] == "outcome" else "double") for c in cols)
        assert (r["source_type"], json.loads(r["source"])) == ("code", {"tags": {"losstune.synthetic": SMALL}})
    # metadata only: the three descriptions together are a few kilobytes for 3,000 rows
    assert len(json.dumps(records)) < 6000


def test_a_local_file_and_a_signed_url_are_named_without_secrets(tmp_path):
    from tuner.record.records import _dataset_source

    assert _dataset_source("data/patients.csv") == ("local", json.dumps({"uri": str(Path("data/patients.csv")
                                                                                     .resolve())}))
    kind, source = _dataset_source("https://bob:pw@host/x.csv?X-Amz-Signature=abc")
    assert kind == "http" and "pw" not in source and "Signature" not in source


def test_a_trials_description_says_how_it_ended_and_whether_it_met_the_targets():
    from trainables.vocab import Status
    from tuner.record.callback import trial_description

    last = {"epoch": 4, "best/epoch": 3, "best/val/auroc": 0.81234, "best/val/auprc": 0.4, "best/val/ece": 0.02,
            "target/auroc_met": 1, "target/auprc_met": 1, "target/all_met": 1, "target/epoch_reached": 2}
    assert trial_description(Status.COMPLETED, last) == (
        "**completed** after 4 epochs: ran every epoch. Best epoch 3: validation AUROC 0.8123, AUPRC 0.4000, "
        "ECE 0.0200. Targets: **met** on validation (first at epoch 2).")
    missed = {**last, "target/auprc_met": 0, "target/all_met": 0, "target/epoch_reached": -1}
    assert trial_description(Status.STOPPED, missed).endswith(
        "Targets: **not met** on validation (AUROC met, AUPRC not met).")
    assert trial_description(Status.DIVERGED, {"epoch": 1, "best/epoch": 0}) == (
        "**diverged** after 1 epoch: its loss turned NaN or infinite. No epoch was evaluated. No targets were set.")


def test_addresses_carry_the_model_training_mode_and_no_credentials():
    from tuner.record.records import experiment_page, run_page, ui_base

    base = ui_base("https://alice:s3cret@mlflow.example.org:8443/prefix/?x=1")
    assert base == "https://mlflow.example.org:8443/prefix"
    assert run_page(base, "7", "abc") == "https://mlflow.example.org:8443/prefix/#/experiments/7/runs/abc" \
                                         "?workflowType=machine_learning"
    assert experiment_page(base, None).endswith("/#/experiments?workflowType=machine_learning")


def test_the_verdict_is_one_sentence_for_every_way_a_job_ends():
    import dataclasses

    from trainables.vocab import JobState
    from tuner.core.summary import JobSummary, TrialLine, WinnerResult
    from tuner.present.markdown import verdict

    def outcome(state: JobState, targets: dict, holdout: dict | None) -> JobSummary:
        line = TrialLine(number=0, trial_id="t", status="completed", epochs=3, best_epoch=3, objective=0.5,
                         metrics={}, all_met=None, config={})
        rows = (line,) * 3 + (dataclasses.replace(line, status="pending"),) * 5
        winner = None if holdout is None else WinnerResult(trial_id="t", run_name="trial 0 (t)", best_epoch=3, val={},
                                                           holdout=holdout, calibration_kinds=(), targets_test={})
        return JobSummary(experiment="j", scenario="s", detection=None, metric="val/score", num_trials=8,
                          state=state.value, wall_s=0.0, folder="/j", location="/j", remote=False, data_given="d",
                          data_source="d", data_rows=(1, 1, 1), data_fingerprint="f", targets=targets,
                          time_budget_s=None, search_keys=(), rows=rows, baseline_planned=True, winner=winner)

    goals = {"auroc": 0.8, "auprc": 0.3}
    h = {"test/auroc": 0.91234, "test/auprc": 0.25}
    assert verdict(outcome(JobState.FINISHED, goals, h)) == (
        "Targets NOT met on the held-out test split: AUROC 0.9123 ≥ 0.8, AUPRC 0.2500 < 0.3.")
    assert verdict(outcome(JobState.STOPPED_ON_TARGET, {"auroc": 0.8, "auprc": None}, h)) == (
        "Targets met on the held-out test split: AUROC 0.9123 ≥ 0.8.")
    assert verdict(outcome(JobState.FINISHED, {"auroc": None, "auprc": None}, h)) == (
        "No targets were set; the winner reached AUROC 0.9123 and AUPRC 0.2500 on the held-out test split.")
    assert verdict(outcome(JobState.INTERRUPTED, goals, None)) == (
        "Interrupted in the stack's search, after 3 of 8 trials: no winner was chosen and the held-out test split "
        "was not touched.")
    assert verdict(outcome(JobState.FAILED, goals, None)).startswith("Failed: every trial diverged or failed")
