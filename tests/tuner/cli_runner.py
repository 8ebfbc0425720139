"""Runs many `losstune` commands, each in a process of its own, without paying the imports each time.

A pre-loaded parent (torch, pandas, MLflow and the CLI imported once) reads one JSON request per
line on stdin — ``{"args": [...], "cwd": "...", "env": {...}, "unset": [...]}`` — forks a child
for it that runs ``tuner.cli.main(args)`` exactly as the console script does, with stdout and
stderr captured to files, and answers ``{"rc": N, "out": "...", "err": "..."}`` on stdout. Every
command gets a fresh process: no state leaks from one case into the next.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile


def _child(req: dict, out_path: str, err_path: str) -> None:
    os.chdir(req["cwd"])
    for k in req.get("unset", []):
        os.environ.pop(k, None)
    os.environ.update(req.get("env", {}))
    for fd, path in ((1, out_path), (2, err_path)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child exits right after
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    rc = 1
    try:
        from tuner.cli import main

        rc = main(req["args"])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        rc = 99
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def serve() -> None:
    import mlflow  # noqa: F401 - imported once, before any fork
    import pandas  # noqa: F401
    import torch  # noqa: F401

    import tuner.cli  # noqa: F401
    import tuner.cli.best  # noqa: F401
    import tuner.job.run  # noqa: F401
    import tuner.job.train  # noqa: F401

    scratch = tempfile.mkdtemp(prefix="lt-cli-runner-")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        out_path, err_path = os.path.join(scratch, "out"), os.path.join(scratch, "err")
        pid = os.fork()
        if pid == 0:
            _child(req, out_path, err_path)
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        with (open(out_path, encoding="utf-8", errors="replace") as o,
              open(err_path, encoding="utf-8", errors="replace") as e):
            answer = {"rc": rc, "out": o.read(), "err": e.read()}
        sys.__stdout__.write(json.dumps(answer) + "\n")
        sys.__stdout__.flush()


if __name__ == "__main__":
    serve()
