"""`ray job submit` against a throwaway local head, the way cluster/README.md tells users to do it.

The head runs in its own process group with its own temp dir, ports and auth token, so it neither
sees nor disturbs the session-scoped Ray of ``ray_session`` (started with ``ray.init`` in this
process) or any other Ray on the machine. It is stopped by SIGTERM to its ``ray start --block``
process, which shuts down exactly the processes it started; ``ray stop`` is never used because it
kills every Ray process of the machine.

Needs the dashboard dependencies (``ray[default]``): without them no job server exists.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RUNTIME_ENV = REPO / "cluster" / "runtime_env.yaml"
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 180
TRAIN_TIMEOUT_S = 420


def _dashboard_dependency_error() -> str | None:
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


pytestmark = pytest.mark.skipif(
    _dashboard_dependency_error() is not None,
    reason=f"Ray job submission needs the dashboard: pip install 'ray[default]' ({_dashboard_dependency_error()})",
)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now (all bound at once, so none is handed out twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class LocalHead:
    address: str  # http://127.0.0.1:<dashboard port>, what `ray job submit --address` takes
    gcs_port: int
    token: str
    env: dict[str, str]  # environment for CLI calls against this head
    process: subprocess.Popen
    temp_dir: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def stop(self) -> None:
        """Stop the head and everything it started (idempotent)."""
        _stop(self.process, self.temp_dir)


def _head_env(token: str) -> dict[str, str]:
    """The caller's environment minus anything that points at another Ray, plus this head's token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        # entrypoints run `python`: make it this interpreter (the venv), as activating the venv would
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        # a value the job must see through runtime_env.yaml's "${MLFLOW_TRACKING_URI}"
        MLFLOW_TRACKING_URI="http://127.0.0.1:5999",
    )
    return env


def _stop(process: subprocess.Popen, temp_dir: Path) -> None:
    import psutil

    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # `ray start --block` drains, then stops its own processes
        try:
            process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: only what it started
            process.wait(timeout=10)
    # belt and braces: anything still running from this head's private temp dir
    leftovers = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(temp_dir) in " ".join(proc.info["cmdline"] or []):
                proc.kill()
                leftovers.append(proc)
        except psutil.Error:
            pass
    psutil.wait_procs(leftovers, timeout=10)


@pytest.fixture(scope="module")
def local_head(request):
    """One throwaway head for this module's tests (2 logical CPUs: a 2-worker Ray Train job fits)."""
    # short temp dir: Ray's unix socket paths must stay under ~107 characters
    temp_dir = Path(tempfile.mkdtemp(prefix="mfhead", dir="/tmp"))
    token = secrets.token_hex(32)
    env = _head_env(token)
    flags = ["--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
             "--node-manager-port", "--object-manager-port"]
    ports = dict(zip(flags, _free_ports(len(flags))))
    dashboard_port = ports["--dashboard-port"]
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1",
           "--num-cpus", "2", "--num-gpus", "0", "--temp-dir", str(temp_dir),
           "--min-worker-port", "0", "--max-worker-port", "0"]  # 0 = any free port, no clash with other Rays
    for flag, port in ports.items():
        cmd += [flag, str(port)]
    log = open(temp_dir / "ray_start.log", "w")
    process = subprocess.Popen(cmd, env=env, cwd=temp_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = LocalHead(f"http://127.0.0.1:{dashboard_port}", ports["--port"], token, env, process, temp_dir)
    try:
        # the session Ray starts while the head boots: overlaps two cold starts, and checks that a
        # ray.init() in this process ignores a head started with `ray start` meanwhile
        request.getfixturevalue("ray_session")
        # ready = the dashboard answers AND the head's dashboard agent (which runs the submitted jobs)
        # is up: the job server waits only 10 s for the agent, which a loaded machine can exceed
        agent_port = ports["--dashboard-agent-listen-port"]
        pending = [f"{head.address}/api/version", f"http://127.0.0.1:{agent_port}/api/local_raylet_healthz"]
        deadline = time.monotonic() + START_TIMEOUT_S
        while pending:
            if process.poll() is not None:
                pytest.fail(f"ray start exited with {process.returncode}:\n{(temp_dir / 'ray_start.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"local head not ready after {START_TIMEOUT_S} s: no answer from {pending[0]}")
            try:
                probe = urllib.request.Request(pending[0], headers=head.headers)
                with urllib.request.urlopen(probe, timeout=2) as response:
                    if response.status == 200:
                        pending.pop(0)
                        continue
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        yield head
    finally:
        head.stop()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait(client, submission_id: str, timeout_s: float):
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(submission_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        if time.monotonic() > deadline:
            client.stop_job(submission_id)
            pytest.fail(f"job {submission_id} still {status} after {timeout_s} s:\n{client.get_job_logs(submission_id)[-3000:]}")
        time.sleep(0.5)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_to_a_local_head(local_head, tmp_path, request):
    """`ray job submit --runtime-env cluster/runtime_env.yaml -- python -m experiments.synthetic …` succeeds."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    # not a parameter: session fixtures would be set up before local_head, which starts it itself
    ray_session = request.getfixturevalue("ray_session")

    session_node = ray_session.get_runtime_context().get_node_id()
    client = JobSubmissionClient(local_head.address, headers=local_head.headers)

    # 1) what a driver like experiments.train sees: runtime_env.yaml's env_vars expanded against the
    #    node's environment, the venv's python, and a ray.init() that joins this head (token included)
    env_vars = yaml.safe_load(RUNTIME_ENV.read_text())["env_vars"]
    probe = client.submit_job(
        entrypoint=(
            "python -c \"import os, sys, ray; print('URI=' + os.environ['MLFLOW_TRACKING_URI']); "
            "print('PY=' + sys.executable); ray.init(address=os.environ.get('RAY_ADDRESS')); "
            "print('TASK=' + ray.get(ray.remote(lambda: os.environ['MLFLOW_TRACKING_URI']).remote()))\""
        ),
        runtime_env={"env_vars": env_vars},
    )

    # 2) the real thing, through the CLI exactly as documented (run from the repository root)
    out_dir = tmp_path / "sprites"
    submission_id = f"maskflow-test-{secrets.token_hex(4)}"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", local_head.address, "--submission-id", submission_id,
           "--no-wait", "--runtime-env", str(RUNTIME_ENV.relative_to(REPO)), "--working-dir", str(REPO),
           "--", "python", "-m", "experiments.synthetic", f"out_dir={out_dir}", "num_videos=2"]
    submitted = subprocess.run(cmd, cwd=REPO, env=local_head.env, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-3000:]

    status = _wait(client, submission_id, JOB_TIMEOUT_S)
    logs = client.get_job_logs(submission_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert sorted(p.name for p in out_dir.glob("*.mp4")) == ["sprites_000.mp4", "sprites_001.mp4"], logs[-3000:]
    assert all(p.stat().st_size > 0 for p in out_dir.glob("*.mp4"))

    assert _wait(client, probe, JOB_TIMEOUT_S) == JobStatus.SUCCEEDED, client.get_job_logs(probe)
    probe_logs = client.get_job_logs(probe)
    assert "URI=http://127.0.0.1:5999" in probe_logs and "TASK=http://127.0.0.1:5999" in probe_logs, probe_logs
    assert f"PY={BIN}" in probe_logs, probe_logs

    # 3) the session Ray of this pytest process was neither joined nor disturbed
    assert ray_session.get_runtime_context().get_node_id() == session_node
    assert not ray_session.get_runtime_context().gcs_address.endswith(f":{local_head.gcs_port}")

    @ray_session.remote
    def ping() -> str:
        return "pong"

    assert ray_session.get(ping.remote(), timeout=60) == "pong"


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_trains_as_the_readme_says(local_head, token_shards, tmp_path):
    """experiments.train submitted with the README's command (``--working-dir . --runtime-env-json``
    carrying the MLflow URI) runs Ray Train with 2 workers on the head, checkpoints, and logs to MLflow."""
    import json

    from ray.job_submission import JobStatus, JobSubmissionClient

    from experiments import tracking
    from experiments.checkpoint import load_checkpoint

    client = JobSubmissionClient(local_head.address, headers=local_head.headers)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    # the submitting side passes the commit: the job's uploaded copy of the code may have no .git
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": uri, "MASKFLOW_GIT_COMMIT": commit}})
    storage = tmp_path / "ray_results"
    submission_id = f"maskflow-train-{secrets.token_hex(4)}"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", local_head.address, "--submission-id", submission_id,
           "--no-wait", "--working-dir", ".", "--runtime-env-json", runtime_env, "--",
           "python", "-m", "experiments.train", f"shards={token_shards}", "run_name=submitted", "scaling.num_workers=2",
           "model.size=tiny", "chunk_size=8", "loop.max_steps=4", "loop.batch_size_per_worker=2", "loop.log_every=2",
           "loop.checkpoint_every=2", "loop.min_steps_per_epoch=2", "loop.sample_sampling_steps=2",
           f"run.storage_path={storage}", "mlflow.system_metrics=false", "mlflow.experiment=submitted"]
    submitted = subprocess.run(cmd, cwd=REPO, env=local_head.env, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-3000:]

    status = _wait(client, submission_id, TRAIN_TIMEOUT_S)
    logs = client.get_job_logs(submission_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]

    state = load_checkpoint(storage / "submitted")  # the run directory: its latest checkpoint
    assert state["step"] == 4 and state["config"]["scaling"]["num_workers"] == 2
    mlflow_client = tracking.get_client(uri)
    experiment = mlflow_client.get_experiment_by_name("submitted")
    assert experiment is not None, f"the job did not log to {uri}:\n{logs[-3000:]}"
    (run,) = mlflow_client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["ray_run_name"] == "submitted"
    assert run.data.tags["checkpoint_location"] == f"{storage}/submitted"
    assert run.data.tags["mlflow.source.git.commit"] == commit and run.data.tags["mlflow.source.name"]
    assert [m.step for m in mlflow_client.get_metric_history(run.info.run_id, "train/masked_ce")] == [2, 4]


@pytest.mark.ray
def test_session_ray_still_works_after_the_head_is_gone(local_head, ray_session):
    """Stopping the throwaway head leaves the session Ray of this process alone."""
    local_head.stop()
    assert local_head.process.poll() is not None

    @ray_session.remote
    def add(a: int, b: int) -> int:
        return a + b

    assert ray_session.get(add.remote(2, 3), timeout=60) == 5
