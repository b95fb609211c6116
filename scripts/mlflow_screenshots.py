"""Re-make the README's MLflow pictures from this project's mlflow.db.

Starts ``mlflow ui`` on 127.0.0.1 (a free port) against ``sqlite:///mlflow.db``,
finds the ``supersam`` experiment and its latest pipeline execution, and takes two
screenshots with headless Chromium (Debian's ``chromium`` package):

- ``docs/img/mlflow-runs.png``: the experiment's runs table (the parent run of the
  latest ``dvc repro`` with its stage runs nested under it);
- ``docs/img/mlflow-compare-train.png``: the compare view of that execution's
  ``train`` runs (one per reordering variant, up to 8).

Run from the project root after ``dvc repro``:
``.venv/bin/python scripts/mlflow_screenshots.py [--chromium /usr/bin/chromium]``.
Prints the two URLs it captured, which are also what to open by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=20000",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(client, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.search_experiments()
            return
        except Exception:  # noqa: BLE001 - the server is not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("mlflow ui did not start; is mlflow installed in this environment?") from None
            time.sleep(1)


def shoot(chromium: str, url: str, path: Path, size: str = "1600,1000") -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--window-size={size}",
            f"--user-data-dir={profile}",
            f"--screenshot={path}",
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not path.is_file():
        raise SystemExit(f"chromium failed on {url}: {proc.stderr[-500:]}")
    print(f"{path}: {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="mlflow.db", help="MLflow sqlite database (default ./mlflow.db)")
    parser.add_argument("--out", default="docs/img", help="folder of the PNGs")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    import mlflow

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "ui",
            "--backend-store-uri",
            f"sqlite:///{Path(args.db).resolve()}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = mlflow.MlflowClient(base)
        wait_for(client, proc)
        experiment = client.get_experiment_by_name("supersam")
        if experiment is None:
            raise SystemExit("no 'supersam' experiment in the database; run `dvc repro` first")
        eid = experiment.experiment_id
        parents = client.search_runs(
            [eid], "tags.stage = 'pipeline'", max_results=1, order_by=["attributes.start_time DESC"]
        )
        query = (
            f"tags.stage = 'train' and tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
            if parents
            else "tags.stage = 'train'"
        )
        train = client.search_runs([eid], query, max_results=8, order_by=["attributes.start_time DESC"])
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        shoot(args.chromium, f"{base}/#/experiments/{eid}/runs", out / "mlflow-runs.png")
        ids = urllib.parse.quote(json.dumps([r.info.run_id for r in train]))
        shoot(
            args.chromium,
            f"{base}/#/compare-runs?runs={ids}&experiments={urllib.parse.quote(json.dumps([eid]))}",
            out / "mlflow-compare-train.png",
            size="1600,1900",
        )
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
