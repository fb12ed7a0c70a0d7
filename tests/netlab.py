"""A NAT lab in Linux network namespaces: an "Internet" bridge in its own namespace, a public
host running the hub, redis-server and Debian's coturn, and hosts behind no NAT, an
endpoint-independent NAT (nftables masquerade) or a symmetric NAT (masquerade fully-random),
with processes started in them through `ip netns exec` and everything torn down on exit.

Needs root, iproute2, nftables, coturn and redis-server (.ci/run installs them). Every run names
its namespaces `swl<pid>x<n>-<host>`, so parallel runs never clash, and removes the namespaces of
runs whose process is gone. Only addresses inside the namespaces (198.18.0.0/24 is the Internet,
10.<n>.0.0/24 the home networks) and 127.0.0.0/8 are used.

Each router drops unsolicited inbound packets in an nftables input chain with policy drop: an
accepted one would be confirmed in conntrack and clash with the host's later outbound mapping,
and no hole would ever open.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TURN_TEMPLATE = ROOT / "deploy" / "turnserver.conf"
INTERNET = "198.18.0"  # /24 on the bridge: the lab's public addresses
PUBLIC_IP = f"{INTERNET}.1"  # the public machine: hub, Redis, coturn
HUB_PORT = 8000
TURN_PORT = 3478
REDIS_PORT = 6379
TURN_SECRET = "lab-0123456789abcdef0123456789abcdef"  # coturn's static-auth-secret
TURN_REALM = "swarmcast.lab"
NAT_KINDS = ("public", "eim", "sym")
_NS_RE = re.compile(r"^swl(\d+)x\d+-")
_CLONE_NEWNET = 0x40000000
_counter = itertools.count()


def _run(*argv: str, input: str | None = None) -> None:
    result = subprocess.run(argv, input=input, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> None:
    """Delete lab namespaces left by runs whose process no longer exists (a killed run)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NS_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def nat_rules(kind: str) -> str:
    """The nftables ruleset of a router namespace: masquerade on the WAN side (fully-random for
    a symmetric NAT) and a firewall that lets in only what conntrack has seen leave."""
    masquerade = "masquerade fully-random" if kind == "sym" else "masquerade"
    return f"""
table inet lab {{
    chain input {{
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iifname {{ "lo", "lan" }} accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
    }}
}}
table ip labnat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" {masquerade}
    }}
}}
"""


@dataclass
class Host:
    """One machine of the lab: its namespace, its address, and what sits in front of it."""

    name: str
    kind: str  # "public", "eim" (endpoint-independent NAT) or "sym" (symmetric NAT)
    netns: str
    ip: str
    router_netns: str | None = None
    wan_ip: str | None = None  # the NAT's public address


@dataclass
class LabProcess:
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    async def line(self, timeout: float = 30.0) -> str:
        """The next line the process printed on stdout; AssertionError if it ended first."""
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise AssertionError(f"{self.name} ended without output: {self.tail()}")
        return raw.decode().strip()

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    @property
    def running(self) -> bool:
        return self.proc.returncode is None


@dataclass
class Lab:
    """Namespaces and processes of one lab; build with add_host(), stop with close()."""

    workdir: Path
    prefix: str = field(default_factory=lambda: f"swl{os.getpid()}x{next(_counter)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[LabProcess] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _next_wan: int = 10
    _next_lan: int = 1
    turn_log: Path | None = None
    turn_secret_file: Path | None = None
    hub_tls: tuple[Path, Path, Path] | None = None  # (cert, key, CA) when hubs serve https

    def _netns(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        _run("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def build(self) -> None:
        """The Internet (a bridge in its own namespace) and the public machine."""
        inet = self._netns("inet")
        self.inet = inet
        _run("ip", "-n", inet, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", inet, "link", "set", "br0", "up")
        self.public = self.add_host("pub", "public", ip=PUBLIC_IP)

    def _uplink(self, ns: str, ifname: str, ip: str) -> None:
        """A veth from `ns` (named `ifname`, holding `ip`/24) to the Internet bridge."""
        port = f"p{len(self._namespaces)}"
        _run(
            "ip", "link", "add", ifname, "netns", ns, "type", "veth",
            "peer", "name", port, "netns", self.inet,
        )
        _run("ip", "-n", self.inet, "link", "set", port, "master", "br0", "up")
        _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ifname)
        _run("ip", "-n", ns, "link", "set", ifname, "up")

    def add_host(self, name: str, kind: str, ip: str | None = None) -> Host:
        """A host on the Internet ("public") or behind a NAT of its own ("eim" or "sym")."""
        if kind not in NAT_KINDS:
            raise ValueError(f"kind must be one of {NAT_KINDS}")
        if name in self.hosts:
            raise ValueError(f"host {name} exists")
        wan = ip or f"{INTERNET}.{self._next_wan}"
        self._next_wan += 1
        if kind == "public":
            ns = self._netns(name)
            self._uplink(ns, "eth0", wan)
            host = Host(name, kind, ns, wan)
        else:
            router = self._netns(f"{name}-nat")
            self._uplink(router, "wan", wan)
            ns = self._netns(name)
            n = self._next_lan
            self._next_lan += 1
            lan = f"10.{n}.0"
            _run(
                "ip", "link", "add", "eth0", "netns", ns, "type", "veth",
                "peer", "name", "lan", "netns", router,
            )
            _run("ip", "-n", router, "addr", "add", f"{lan}.1/24", "dev", "lan")
            _run("ip", "-n", router, "link", "set", "lan", "up")
            _run("ip", "-n", ns, "addr", "add", f"{lan}.2/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "route", "add", "default", "via", f"{lan}.1")
            _run("ip", "netns", "exec", router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
            _run("ip", "netns", "exec", router, "nft", "-f", "-", input=nat_rules(kind))
            host = Host(name, kind, ns, f"{lan}.2", router_netns=router, wan_ip=wan)
        self.hosts[name] = host
        return host

    # processes

    async def spawn(
        self, host: Host, name: str, *argv: str, env: dict[str, str] | None = None
    ) -> LabProcess:
        """Start argv in the host's namespace; stdout is a pipe, stderr goes to a log file."""
        log = self.workdir / f"{name}.log"
        err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", host.netns, *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env={**os.environ, **(env or {})},
            )
        finally:
            os.close(err)
        p = LabProcess(name, proc, log)
        self.procs.append(p)
        return p

    async def stop(self, p: LabProcess, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; the exit code."""
        if p.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(p.proc.wait(), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.kill()
                await p.proc.wait()
        assert p.proc.returncode is not None
        return p.proc.returncode

    async def start_redis(self) -> LabProcess:
        p = await self.spawn(
            self.public, "redis",
            "redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
        )
        await self.wait_tcp(self.public, "127.0.0.1", REDIS_PORT, p)
        return p

    async def start_turn(self) -> LabProcess:
        """Debian's coturn on the public machine, from deploy/turnserver.conf with the lab's
        address and shared secret filled in; verbose log (with per-session byte counts). Hubs
        started after this hand out credentials for it (start_hub)."""
        conf = self.workdir / "turnserver.conf"
        conf.write_text(turn_config(PUBLIC_IP, TURN_REALM, TURN_SECRET))
        self.turn_secret_file = self.workdir / "turn.secret"
        self.turn_secret_file.write_text(TURN_SECRET + "\n")
        self.turn_secret_file.chmod(0o600)
        self.turn_log = self.workdir / "turnserver-run.log"
        p = await self.spawn(
            self.public, "turnserver",
            "turnserver", "-c", str(conf), "--log-file", str(self.turn_log), "--simple-log",
            "--pidfile", str(self.workdir / "turnserver.pid"),
            "--userdb", str(self.workdir / "turndb"), "--no-stdout-log", "--verbose",
            "--allowed-peer-ip", f"{INTERNET}.0-{INTERNET}.255",
        )
        await self.wait_udp_listening(self.public, TURN_PORT, p)
        return p

    async def start_hub(self, *, redis: bool = True, port: int = HUB_PORT) -> LabProcess:
        """`streamer hub` on the public machine (sharing the lab's Redis unless redis=False), as
        docs/deploy.md runs it: handing out the STUN server and short-lived TURN credentials once
        coturn runs (start_turn), serving https with use_tls()."""
        argv = [sys.executable, "-m", "streamer", "hub", "--host", PUBLIC_IP, "--port", str(port)]
        if redis:
            argv += ["--redis", f"redis://127.0.0.1:{REDIS_PORT}/0"]
        if self.turn_secret_file is not None:
            argv += [
                "--stun", self.stun_url, "--turn", self.turn_url,
                "--turn", f"{self.turn_url}?transport=tcp",
                "--turn-secret", str(self.turn_secret_file),
            ]
        if self.hub_tls is not None:
            argv += ["--tls-cert", str(self.hub_tls[0]), "--tls-key", str(self.hub_tls[1])]
        starts = sum(1 for p in self.procs if p.name.startswith(f"hub{port}"))
        p = await self.spawn(self.public, f"hub{port}-{starts}", *argv)
        await p.line()
        return p

    def ice(self, mode: str) -> str:
        """SWARMCAST_ICE_SERVERS for mode "turn" ("": the servers and short-lived credentials
        the hub hands out), "stun" (STUN only) or "none"; any other string is taken as the
        setting itself."""
        return {"turn": "", "stun": self.stun_url, "none": "none"}.get(mode, mode)

    def _env(self, ice: str) -> dict[str, str]:
        env = {"SWARMCAST_ICE_SERVERS": self.ice(ice), "XDG_DATA_HOME": str(self.workdir / "xdg")}
        return env

    def _hub_ca(self) -> list[str]:
        return ["--hub-ca", str(self.hub_tls[2])] if self.hub_tls is not None else []

    async def broadcast(
        self,
        host: Host,
        *,
        ice: str,
        duration: float | None = None,
        name: str = "broadcaster",
        hub: str | None = None,
    ) -> tuple[LabProcess, str]:
        """`streamer broadcast test` (320x180, 15 fps, 300 kbit/s) on host; (process, key)."""
        argv = [
            sys.executable, "-m", "streamer", "broadcast", "test", "--hub", hub or self.hub_url,
            "--size", "320x180", "--fps", "15", "--bitrate", "300k",
            "--feed", str(self.workdir / f"{name}-feed"), *self._hub_ca(),
        ]
        if duration is not None:
            argv += ["--duration", str(duration)]
        p = await self.spawn(host, name, *argv, env=self._env(ice))
        return p, await p.line()

    async def watch(
        self, host: Host, key: str, *, ice: str, name: str, hub: str | None = None
    ) -> tuple[LabProcess, str]:
        """`viewer watch KEY` on host; (process, its page URL, e.g. for /stats)."""
        p = await self.spawn(
            host, name,
            sys.executable, "-m", "viewer", "watch", key, "--hub", hub or self.hub_url,
            "--no-browser",
            "--port", "0", "--store", str(self.workdir / f"{name}-store"), *self._hub_ca(),
            env=self._env(ice),
        )
        return p, await p.line(60.0)

    def address_kinds(self) -> dict[str, str]:
        """Which host an address seen on the Internet belongs to: a public host's own address
        or a NAT's public address, mapped to the host's name."""
        return {(h.wan_ip or h.ip): h.name for h in self.hosts.values()}

    @property
    def hub_url(self) -> str:
        return self.hub_url_on(HUB_PORT)

    def hub_url_on(self, port: int) -> str:
        scheme = "https" if self.hub_tls is not None else "http"
        return f"{scheme}://{PUBLIC_IP}:{port}"

    @property
    def stun_url(self) -> str:
        return f"stun:{PUBLIC_IP}:{TURN_PORT}"

    @property
    def turn_url(self) -> str:
        return f"turn:{PUBLIC_IP}:{TURN_PORT}"

    async def wait_tcp(self, host: Host, ip: str, port: int, p: LabProcess, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ok = await asyncio.to_thread(in_netns, host.netns, _tcp_open, ip, port)
            if ok:
                return
            if not p.running or time.monotonic() > deadline:
                raise RuntimeError(f"{p.name} is not listening on {ip}:{port}: {p.tail()}")
            await asyncio.sleep(0.05)

    async def wait_udp_listening(
        self, host: Host, port: int, p: LabProcess, timeout: float = 10
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ss = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", host.netns, "ss", "-Hlun", f"sport = :{port}",
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await ss.communicate()
            if out.strip():
                return
            if not p.running or time.monotonic() > deadline:
                raise RuntimeError(f"{p.name} is not listening on udp port {port}: {p.tail()}")
            await asyncio.sleep(0.05)

    def turn_usage(self) -> list[dict[str, int]]:
        """Relayed packets and bytes of every TURN allocation coturn closed so far (its log's
        `peer usage:` lines): rp/rb received from peers, sp/sb sent to peers."""
        if self.turn_log is None or not self.turn_log.exists():
            return []
        return parse_turn_usage(self.turn_log.read_text(errors="replace"))

    async def close(self) -> None:
        for p in reversed(self.procs):
            await self.stop(p)
        await asyncio.to_thread(self.delete_namespaces)

    def delete_namespaces(self) -> None:
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._namespaces.clear()


_USAGE_RE = re.compile(r"peer usage: realm=<[^>]*>, username=<[^>]*>, rp=(\d+), rb=(\d+), sp=(\d+), sb=(\d+)")


_USER_RE = re.compile(r"usage: realm=<[^>]*>, username=<([^>]*)>")


def turn_usernames(log: str) -> set[str]:
    """The user names of the allocations in a coturn log."""
    return set(_USER_RE.findall(log))


def parse_turn_usage(log: str) -> list[dict[str, int]]:
    return [
        dict(zip(("rp", "rb", "sp", "sb"), map(int, m.groups()), strict=True)) for m in _USAGE_RE.finditer(log)
    ]


def turn_config(public_ip: str, realm: str, secret: str) -> str:
    """deploy/turnserver.conf with its @PLACEHOLDERS@ filled in."""
    text = TURN_TEMPLATE.read_text()
    for key, value in {"PUBLIC_IP": public_ip, "REALM": realm, "TURN_SECRET": secret}.items():
        text = text.replace(f"@{key}@", value)
    if "@" in "".join(line for line in text.splitlines() if not line.startswith("#")):
        raise ValueError("deploy/turnserver.conf has a placeholder the lab does not fill")
    return text


def _tcp_open(ip: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((ip, port)) == 0


def in_netns(netns: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn(*args) on a fresh thread that has entered the network namespace `netns`, so the
    sockets it opens live there (the thread ends with the call; no other thread moves)."""
    result: list[Any] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
            finally:
                os.close(fd)
            result.append(fn(*args))
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


async def http_json(host: Host, url: str) -> dict:
    """GET url from inside the host's namespace (e.g. a viewer's 127.0.0.1 page)."""
    return await asyncio.to_thread(in_netns, host.netns, _get_json, url)


_ROUTE_RE = re.compile(
    r"ICE connected: (direct|relayed) \((\w+) ([\d.]+):\d+ -> (\w+) ([\d.]+):\d+\)"
)


@dataclass(frozen=True)
class Route:
    """One connection a process made, from its log: direct or relayed, and the remote IP (a
    peer's own address, its NAT's, or the TURN server's)."""

    relayed: bool
    local_type: str
    remote_type: str
    remote_ip: str


def routes(p: LabProcess) -> list[Route]:
    """The connections `p` made so far (streamer.net.ice logs each one with its route)."""
    with contextlib.suppress(OSError):
        text = p.log.read_text(errors="replace")
        return [Route(m[1] == "relayed", m[2], m[4], m[5]) for m in _ROUTE_RE.finditer(text)]
    return []


async def stats_until(
    host: Host,
    url: str,
    predicate: Callable[[dict], bool],
    what: str,
    timeout: float = 60.0,
    proc: LabProcess | None = None,
    path: str = "stats",
) -> dict:
    """Poll a viewer's /stats (or another JSON page) from inside its namespace (another process:
    there is nothing to await but its answers) until predicate holds; AssertionError naming
    `what` otherwise."""
    deadline = time.monotonic() + timeout
    stats: dict = {}
    while True:
        if proc is not None and not proc.running:
            raise AssertionError(f"{proc.name} exited before {what}: {proc.tail()}")
        with contextlib.suppress(OSError):
            stats = await http_json(host, url + path)
            if predicate(stats):
                return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {stats}")
        await asyncio.sleep(0.5)


def complete_from_join(timeline: dict, at_least: int = 3) -> bool:
    """A viewer's /timeline shows an ended stream it holds from the block where it started
    playing (`join_block`) to the last, with nothing missing: at least `at_least` blocks. Blocks
    before the join may be held too (history fetched for the swarm's archive), or not."""
    # A row is [index, pts, duration, flags, known] or an object with a "known" field.
    rows = [
        (int(row["index"]), bool(row["known"]))
        if isinstance(row, dict)
        else (int(row[0]), bool(row[4]))
        for row in timeline.get("blocks", [])
    ]
    join = timeline.get("join_block")
    if not timeline.get("ended") or join is None:
        return False
    held = [known for index, known in rows if index >= join]
    return all(held) and len(held) >= at_least


@contextlib.asynccontextmanager
async def nat_lab(workdir: Path) -> AsyncIterator[Lab]:
    """A built Lab, always torn down (processes stopped, namespaces deleted) on exit."""
    if os.geteuid() != 0:
        raise RuntimeError("the NAT lab needs root (network namespaces and nftables)")
    remove_stale_namespaces()
    lab = Lab(workdir)
    try:
        lab.build()
        yield lab
    finally:
        await lab.close()


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    """An empty NAT lab (Internet and public machine); tests add hosts and processes."""
    async with nat_lab(tmp_path) as built:
        yield built
