#!/usr/bin/env python
"""Start (or stop) a token-authenticated Ray head node on free ports, next to any other Ray on the machine.

    python infra/ray_head.py start --dir /tmp/semrec-head [--num-cpus 2] [--object-store-mb 2000]
    python infra/ray_head.py join --dir /tmp/semrec-head [--num-cpus 2]     # a second node on this machine
    python infra/ray_head.py kill-node --dir /tmp/semrec-head --node 1       # SIGKILL it (a lost node)
    python infra/ray_head.py stop --dir /tmp/semrec-head

`start` writes a random auth token to <dir>/auth_token (mode 0600) unless one exists, picks a free port
for every Ray service (GCS, dashboard, dashboard agent HTTP/gRPC, runtime-env agent, metrics, client
server, node and object managers: the defaults, e.g. the agent's 52365, clash with another Ray on the
same machine and then `ray job submit` fails with "No available agent to submit job"), starts
`ray start --head` with RAY_AUTH_MODE=token, waits until the job agent accepts submissions, and prints
the address, the token file and the submit command. `stop` ends only this head's processes (`ray stop` would
end every Ray on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PORT_FLAGS = ["--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port",
              "--node-manager-port", "--object-manager-port"]


def free_port() -> int:
    return free_ports(["port"])["port"]


def free_ports(flags: list[str]) -> dict[str, int]:
    """One free port per flag, all different: every socket stays bound until all are picked (one at a time,
    the kernel can hand out the same port twice; seen: Ray's GCS and client server given one port)."""
    socks = [socket.socket() for _ in flags]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return {flag: s.getsockname()[1] for flag, s in zip(flags, socks)}
    finally:
        for s in socks:
            s.close()


def ray_cli() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def start(d: Path, num_cpus: int, object_store_mb: int, host: str, timeout: float) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    token = d / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32) + "\n")
        token.chmod(0o600)
    temp = Path("/tmp") / f"semrec-ray-{free_port()}"  # short: Ray's unix socket paths are length-limited
    ports = free_ports(PORT_FLAGS)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           # the job's `python` is the head's: this virtualenv's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [ray_cli(), "start", "--head", f"--num-cpus={num_cpus}", f"--object-store-memory={object_store_mb << 20}",
           f"--dashboard-host={host}", "--disable-usage-stats", f"--temp-dir={temp}",
           *[f"{flag}={port}" for flag, port in ports.items()]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if r.returncode:
        raise SystemExit(f"ray start failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    address = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{ports['--dashboard-port']}"
    info = {"address": address, "token_file": str(token), "temp_dir": str(temp), "gcs_port": ports["--port"]}
    (d / "head.json").write_text(json.dumps(info, indent=2) + "\n")
    wait_ready(address, token.read_text().strip(), timeout)
    return info


def process_trees(marks: list[str], exact: bool = False) -> set:
    """The processes with a command-line argument equal to (``exact``) or containing one of ``marks``, and all
    their descendants."""
    import psutil

    def hit(args: list[str]) -> bool:
        return any((m == a) if exact else (m in a) for a in args for m in marks)

    procs = {p for p in psutil.process_iter(["cmdline"]) if hit(p.info["cmdline"] or [])}
    for p in list(procs):
        try:
            procs.update(p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return procs


NODE_PORT_FLAGS = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                   "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port"]


def join(d: Path, num_cpus: int, object_store_mb: int) -> dict:
    """Start one more Ray node on this machine, attached to the head of ``d`` (a multi-node cluster on one
    machine: fault tests stop it to lose a node)."""
    info = json.loads((d / "head.json").read_text())
    n = 1 + len(list(d.glob("node-*.json")))
    ports = free_ports(NODE_PORT_FLAGS)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": info["token_file"],
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [ray_cli(), "start", f"--address=127.0.0.1:{info['gcs_port']}", f"--num-cpus={num_cpus}",
           f"--object-store-memory={object_store_mb << 20}", "--disable-usage-stats",
           *[f"{flag}={port}" for flag, port in ports.items()]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if r.returncode:
        raise SystemExit(f"ray start (join) failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    node = {"node": n, "node_manager_port": ports["--node-manager-port"], "num_cpus": num_cpus}
    (d / f"node-{n}.json").write_text(json.dumps(node, indent=2) + "\n")
    return node


def kill_node(d: Path, n: int) -> int:
    """SIGKILL every process of joined node ``n`` (its raylet, found by its node-manager port, and everything
    under it): what a machine that dies looks like to the rest of the cluster. Returns the processes killed."""
    import psutil

    node = json.loads((d / f"node-{n}.json").read_text())
    procs = process_trees([f"--node_manager_port={node['node_manager_port']}"], exact=True)
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    (d / f"node-{n}.json").unlink()
    return len(procs)


def wait_ready(address: str, token: str, timeout: float) -> None:
    """Until the job agent answers (it starts a few seconds after `ray start` returns)."""
    deadline = time.monotonic() + timeout
    req = urllib.request.Request(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    while True:
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the head's job API at {address} did not answer within {timeout:g} s")
        time.sleep(1)


def stop(d: Path) -> None:
    import psutil

    info = json.loads((d / "head.json").read_text())
    procs = process_trees([info["temp_dir"], f":{info['gcs_port']}"])
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs), timeout=5)
    for p in alive:
        p.kill()
    shutil.rmtree(info["temp_dir"], ignore_errors=True)
    (d / "head.json").unlink()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["start", "stop", "join", "kill-node"])
    p.add_argument("--node", type=int, default=1, help="kill-node: which joined node (1, 2, ...)")
    p.add_argument("--dir", type=Path, default=Path.home() / ".semrec" / "head",
                   help="holds auth_token and head.json (default ~/.semrec/head)")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count())
    p.add_argument("--object-store-mb", type=int, default=2000, help="object store size (Ray's default takes ~30%% of RAM)")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="0.0.0.0 to accept submissions from other machines")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for the job agent")
    a = p.parse_args()
    if a.action == "join":
        node = join(a.dir, a.num_cpus, a.object_store_mb)
        print(f"node {node['node']} joined ({node['num_cpus']} CPUs)")
        return 0
    if a.action == "kill-node":
        print(f"node {a.node}: killed {kill_node(a.dir, a.node)} processes")
        return 0
    if a.action == "stop":
        stop(a.dir)
        print(f"stopped the head node of {a.dir}")
        return 0
    info = start(a.dir, a.num_cpus, a.object_store_mb, a.dashboard_host, a.timeout)
    print(f"address: {info['address']}\ntoken:   {info['token_file']}\n"
          f"submit:  python jobs/submit.py --address {info['address']} --token-file {info['token_file']} -- "
          f"python jobs/JOB.py ...\nstop:    python infra/ray_head.py stop --dir {a.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
