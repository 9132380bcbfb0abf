"""Hosts on one machine: Linux network namespaces joined by a bridge, for benches and tests that
cut a host off from the others (bench/partition.py).

``Network(roles)`` makes a hub namespace holding a bridge, and one namespace per role, each joined
to the bridge by a veth pair: the host's ``eth0`` with a private address (10.77.0.2, .3, ...), the
other end ``h-<role>`` in the hub. The addresses exist only inside these namespaces: nothing of
the machine's own network is touched, and nothing outside can reach them. ``cut(role)`` takes the
hub's end of a host's link down, so its packets vanish the way they do when a cable or a switch
fails (no refusal, no reset: TCP just waits); ``join(role)`` brings it back.

A program runs on a host through its ``prefix`` (``ip netns exec NAME``, which executes it in
place: its pid is the one to signal). The calling thread itself can step onto a host with
``inside(host)``, e.g. a bench reaching the private addresses from a client host.

Every name starts with ``wdpt<pid>-`` (the pid of the process that made it): ``remove_leftovers``
removes the namespaces of processes that died without cleaning up, and nothing of a run that is
still going. Making namespaces needs root; ``not_permitted()`` says why it cannot be done here.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PREFIX = "wdpt"
NETNS_DIR = Path("/run/netns")
SUBNET = "10.77.0"  # /24, inside the namespaces only
_CLONE_NEWNET = 0x40000000
_OWN_NAME = re.compile(rf"^{PREFIX}(\d+)-")


@dataclass(frozen=True)
class Host:
    """Where a process runs: a name (its Postgres connections' application_name), the address it
    listens on, and the command that runs a program there."""

    name: str
    address: str
    prefix: tuple[str, ...] = ()
    namespace: str | None = None


LOCAL = Host("local", "127.0.0.1")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def not_permitted() -> str | None:
    """Why this machine does not let us make hosts (None: it does). Tries for real: adds a
    namespace with a veth pair, and removes it."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN); this runs as uid " + str(os.geteuid())
    probe = f"{PREFIX}{os.getpid()}-probe"
    added = _ip("netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns add` is not permitted here: {added.stderr.strip()}"
    try:
        veth = _ip("-n", probe, "link", "add", "name", "pa", "type", "veth", "peer", "name", "pb", check=False)
        if veth.returncode != 0:
            return f"veth pairs cannot be made here: {veth.stderr.strip()}"
        bridge = _ip("-n", probe, "link", "add", "name", "br0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"bridges cannot be made here: {bridge.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _own_namespaces() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if _OWN_NAME.match(p.name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_namespace(name: str) -> None:
    """Stop what still runs in it (only processes a run of ours started there), then remove it:
    its veth ends go with it."""
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", name, check=False)


def remove_leftovers() -> list[str]:
    """Remove the namespaces of earlier runs whose process is gone (a crash, a SIGKILL); the names
    removed. A run still going keeps its own."""
    removed = []
    for name in _own_namespaces():
        match = _OWN_NAME.match(name)
        assert match is not None
        if not _alive(int(match.group(1))):
            _delete_namespace(name)
            removed.append(name)
    return removed


class Network:
    """The hub and its hosts (see the module's docstring); removed on exit, at interpreter exit
    too, whatever happened."""

    def __init__(self, roles: Sequence[str]) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.hub = f"{self.tag}-hub"
        self.roles = list(roles)
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []

    def __enter__(self) -> Network:
        atexit.register(self.remove)
        try:
            self._add_namespace(self.hub)
            _ip("-n", self.hub, "link", "add", "name", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            for n, role in enumerate(self.roles):
                self.hosts[role] = self._add_host(role, f"{SUBNET}.{n + 2}")
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _add_host(self, role: str, address: str) -> Host:
        namespace = f"{self.tag}-{role}"
        self._add_namespace(namespace)
        end = self._hub_end(role)
        # Both ends are made inside their namespaces: the machine's own never sees them.
        _ip("link", "add", "name", end, "netns", self.hub, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("-n", self.hub, "link", "set", end, "master", "br0", "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        return Host(role, address, ("ip", "netns", "exec", namespace), namespace)

    @staticmethod
    def _hub_end(role: str) -> str:
        name = f"h-{role}"
        if len(name) > 15:  # IFNAMSIZ
            raise ValueError(f"role name too long for an interface: {role!r}")
        return name

    def cut(self, role: str) -> None:
        """The host's link goes down at the hub: its packets, both ways, are lost from now on."""
        _ip("-n", self.hub, "link", "set", self._hub_end(role), "down")

    def join(self, role: str) -> None:
        _ip("-n", self.hub, "link", "set", self._hub_end(role), "up")

    def remove(self) -> None:
        """Hosts first (what runs there is stopped), then the hub. Safe to call again."""
        for name in reversed(self._made):
            _delete_namespace(name)
        self._made.clear()


@contextlib.contextmanager
def inside(host: Host) -> Iterator[None]:
    """The calling thread steps into the host's network namespace, and back on exit. Sockets it
    (or a thread it starts meanwhile) opens belong to that host; those opened before stay where
    they were."""
    assert host.namespace is not None, "only a host of a Network has a namespace to enter"
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net", "rb") as own, open(NETNS_DIR / host.namespace, "rb") as target:
        if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {host.namespace}: {os.strerror(error)}")
        try:
            yield
        finally:
            if libc.setns(own.fileno(), _CLONE_NEWNET) != 0:
                error = ctypes.get_errno()
                raise OSError(error, f"setns back from {host.namespace}: {os.strerror(error)}")
