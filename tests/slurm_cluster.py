"""A real single-node Slurm on localhost for the tests: installed with apt-get where missing,
configured in a temporary folder, its daemons (munged, slurmctld, slurmd) started as plain
processes and stopped by their process ids.

`start(folder)` returns a `Cluster` whose `env` (``SLURM_CONF`` and ``PATH``) the Slurm
clients need; `Cluster.stop()` ends the daemons it started. Needs root (the daemons run as
root, as in a CI container)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin")


class ClusterError(RuntimeError):
    """The cluster could not be installed or started; the message says which step."""


def find(program: str) -> str | None:
    """`program` on PATH or in the system's sbin folders."""
    return shutil.which(program) or shutil.which(program, path=os.pathsep.join(SBIN))


def install() -> None:
    """apt-get install the Slurm and munge packages when a daemon or `sbatch` is missing."""
    if all(find(p) for p in (*DAEMONS, "sbatch", "munge")):
        return
    if os.geteuid() != 0:
        raise ClusterError("slurm-wlm and munge are not installed and this is not root: "
                           "install them with apt-get install slurm-wlm munge")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-2000:]}")
    missing = [p for p in (*DAEMONS, "sbatch") if not find(p)]
    if missing:
        raise ClusterError(f"after apt-get install {' '.join(PACKAGES)}: still missing {missing}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_conf(folder: Path, host: str, cpus: int, memory_mb: int, socket_path: Path) -> str:
    """The slurm.conf of a one-node cluster whose state, spool, logs and pids live in `folder`."""
    ctld, slurmd = _free_port(), _free_port()
    return "\n".join([
        "ClusterName=pdeinf-test",
        f"SlurmctldHost={host}",
        f"SlurmctldPort={ctld}",
        f"SlurmdPort={slurmd}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"AuthInfo=socket={socket_path}",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        "JobRequeue=1",
        "MinJobAge=3600",
        f"NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class Cluster:
    folder: Path
    env: dict
    pids: dict[str, int] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True) -> str:
        """A Slurm client command against this cluster; its stdout."""
        done = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=60,
                              check=False)
        if check and done.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)}: {done.stderr.strip()}")
        return done.stdout

    def stop(self) -> None:
        """SIGTERM each daemon this cluster started, by pid (slurmd, slurmctld, then munged),
        and wait for it to exit (SIGKILL after 10 s)."""
        for name in reversed(DAEMONS):
            pid = self.pids.pop(name, None)
            if pid is not None:
                _terminate(pid)

    def log_tail(self) -> str:
        """The last lines of the daemons' logs (for a failure message)."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.folder / name
            if path.is_file():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-15:]))
        return "\n".join(parts)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _read_pid(path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text().strip())
        time.sleep(0.1)
    raise ClusterError(f"{path} did not appear within {timeout:.0f} s")


def _start_munge(cluster: Cluster) -> None:
    folder = cluster.folder / "munge"
    folder.mkdir(mode=0o700)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    pid_file = folder / "munged.pid"
    subprocess.run([find("munged"), "--force", f"--key-file={key}", f"--socket={folder / 'socket'}",
                    f"--pid-file={pid_file}", f"--log-file={cluster.folder / 'munged.log'}",
                    f"--seed-file={folder / 'seed'}"], check=True, capture_output=True, timeout=30)
    cluster.pids["munged"] = _read_pid(pid_file, 10)


def _start_daemon(cluster: Cluster, name: str) -> None:
    subprocess.run([find(name), "-f", cluster.env["SLURM_CONF"]], env=cluster.env, check=True,
                   capture_output=True, timeout=30)
    cluster.pids[name] = _read_pid(cluster.folder / f"{name}.pid", 15)


def _wait_idle(cluster: Cluster, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = cluster.run("sinfo", "-h", "-o", "%T", check=False).strip()
        if state in ("idle", "mixed", "allocated"):
            return
        time.sleep(0.5)
    raise ClusterError(f"the node is {state or 'unknown'}, not idle, after {timeout:.0f} s\n"
                       f"{cluster.log_tail()}")


def start(folder: Path | str, *, cpus: int | None = None, memory_mb: int = 8000) -> Cluster:
    """Install where missing, configure in `folder`, start munged, slurmctld and slurmd, and
    wait until the node is idle. On failure the daemons already started are stopped."""
    install()
    folder = Path(folder)
    folder.chmod(0o755)
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, host, cpus or os.cpu_count() or 1, memory_mb,
                               folder / "munge" / "socket"))
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    cluster = Cluster(folder, dict(os.environ, SLURM_CONF=str(conf), PATH=path))
    try:
        _start_munge(cluster)
        _start_daemon(cluster, "slurmctld")
        _start_daemon(cluster, "slurmd")
        _wait_idle(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster
