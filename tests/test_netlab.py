"""Swarmcast behind NATs, in the namespace lab of tests/netlab.py: the lab's NATs behave as
named; peers connect directly wherever a direct path exists; two symmetric-NAT nodes connect
through coturn and the relay carries the stream; without TURN, viewers get the whole stream
through the peers they can reach. Real `streamer broadcast` and `viewer watch` processes."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures_net import Certificates, certificates  # noqa: F401 (fixture)
from tests.netlab import (
    PUBLIC_IP,
    Lab,
    LabProcess,
    Route,
    complete_from_join,
    http_json,
    in_netns,
    lab,  # noqa: F401 (fixture)
    nat_lab,
    remove_stale_namespaces,
    routes,
    stats_until,
    turn_usernames,
)

pytestmark = pytest.mark.timeout(240)


def _udp(ip: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5.0)
    sock.bind((ip, port))
    return sock


def _mapping(the_lab: Lab, name: str) -> tuple[tuple[str, int], tuple[str, int], bytes]:
    """From `name`'s port 5000, a datagram to two ports of the public machine: the source
    address each saw. Then a third port, which the host never sent to, sends to the mapping made
    for the first (unsolicited), and the first port answers: the first datagram the host gets."""
    host = the_lab.hosts[name]
    a = in_netns(the_lab.public.netns, _udp, PUBLIC_IP, 40001)
    b = in_netns(the_lab.public.netns, _udp, PUBLIC_IP, 40002)
    c = in_netns(the_lab.public.netns, _udp, PUBLIC_IP, 40003)
    client = in_netns(host.netns, _udp, "0.0.0.0", 5000)
    try:
        client.sendto(b"to a", (PUBLIC_IP, 40001))
        _, seen_a = a.recvfrom(100)
        client.sendto(b"to b", (PUBLIC_IP, 40002))
        _, seen_b = b.recvfrom(100)
        c.sendto(b"unsolicited", seen_a)
        a.sendto(b"answer", seen_a)
        first, _ = client.recvfrom(100)
        return seen_a, seen_b, first
    finally:
        for sock in (a, b, c, client):
            sock.close()


async def test_the_lab_nats_behave_as_named(lab: Lab) -> None:  # noqa: F811
    lab.add_host("open", "public")
    eim = lab.add_host("eim", "eim")
    sym = lab.add_host("sym", "sym")

    seen_a, seen_b, first = await asyncio.to_thread(_mapping, lab, "open")
    assert seen_a == seen_b == (lab.hosts["open"].ip, 5000)
    assert first == b"unsolicited"  # no NAT, no firewall

    seen_a, seen_b, first = await asyncio.to_thread(_mapping, lab, "eim")
    assert seen_a[0] == seen_b[0] == eim.wan_ip
    assert seen_a[1] == seen_b[1]  # one mapping whatever the destination
    assert first == b"answer"  # but only the destination may answer through it

    seen_a, seen_b, first = await asyncio.to_thread(_mapping, lab, "sym")
    assert seen_a[0] == seen_b[0] == sym.wan_ip
    assert seen_a[1] != seen_b[1]  # a new mapping per destination
    assert first == b"answer"


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


async def test_the_lab_leaves_nothing_behind_even_when_a_test_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the test failed"):
        async with nat_lab(tmp_path) as built:
            host = built.add_host("h", "sym")
            sleeper = await built.spawn(host, "sleeper", "sleep", "600")
            mine = {ns for ns in _namespaces() if ns.startswith(built.prefix + "-")}
            assert len(mine) == 4  # the Internet, the public machine, a router and its host
            raise RuntimeError("the test failed")
    assert sleeper.proc.returncode is not None
    assert not {ns for ns in _namespaces() if ns.startswith(built.prefix + "-")}


def test_a_killed_runs_namespaces_are_removed_by_the_next_run() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = f"swl{gone.pid}x0-inet"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        remove_stale_namespaces()
        assert stale not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def _direct_to(the_lab: Lab, p: LabProcess) -> set[str]:
    """Names of the hosts `p` has a direct channel to (by the remote address of the route)."""
    names = the_lab.address_kinds()
    return {names.get(r.remote_ip, r.remote_ip) for r in routes(p) if not r.relayed}


async def _until(check, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


async def test_peers_connect_directly_wherever_a_direct_path_exists(lab: Lab) -> None:  # noqa: F811
    await lab.start_redis()
    await lab.start_turn()
    await lab.start_hub()
    bc = lab.add_host("bc", "public")
    broadcaster, key = await lab.broadcast(bc, ice="turn")
    viewers = {}
    for name, kind in (("eim1", "eim"), ("eim2", "eim"), ("sym1", "sym")):
        host = lab.add_host(name, kind)
        viewers[name] = (host, *await lab.watch(host, key, ice="turn", name=name))
    for host, proc, url in viewers.values():
        await stats_until(host, url, lambda s: s["blocks_have"] >= 3, f"{proc.name} playing", proc=proc)

    # A direct path exists from anyone to a public host and between two endpoint-independent
    # NATs (hole punching); TURN is configured everywhere, yet these are all direct. (Without
    # streamer.net.ice.prefer_direct_routes, aioice often nominated the relay here.)
    expect = {
        "eim1": {"bc", "eim2"},
        "eim2": {"bc", "eim1"},
        "sym1": {"bc"},
    }
    for name, want in expect.items():
        proc = viewers[name][1]
        await _until(
            lambda proc=proc, want=want: want <= _direct_to(lab, proc),
            f"{name} to connect directly to {sorted(want)} (has {sorted(_direct_to(lab, proc))})",
        )
    await _until(
        lambda: {"eim1", "eim2", "sym1"} <= _direct_to(lab, broadcaster),
        "the broadcaster to connect directly to every viewer",
    )
    # Between a symmetric NAT and an endpoint-independent one only the relay gets through.
    assert all(
        r.relayed for r in routes(viewers["sym1"][1]) if r.remote_ip not in (bc.ip, PUBLIC_IP)
    )


async def test_symmetric_nat_peers_connect_through_turn_and_the_relay_carries_the_stream(
    lab: Lab, certificates: Certificates,  # noqa: F811
) -> None:
    """Both ends behind symmetric NATs: no direct path, so every byte of the stream crosses
    coturn, with the short-lived credentials the hub hands out (no TURN password anywhere on
    the peers), from a hub that serves https with a certificate the peers verify. (This is what failed in the first lab: coturn tore an allocation down, silently,
    when relaying to a peer's private host candidate failed with "network unreachable";
    deploy/turnserver.conf denies private and special peer ranges, so such a CHANNEL_BIND is
    refused with 403 instead and the allocation lives.)"""
    lab.hub_tls = (certificates.cert, certificates.key, certificates.ca)
    await lab.start_redis()
    await lab.start_turn()
    await lab.start_hub()
    assert lab.hub_url.startswith("https://")
    bc = lab.add_host("bc", "sym")
    viewer_host = lab.add_host("v", "sym")
    broadcaster, key = await lab.broadcast(bc, ice="turn", duration=8)
    viewer, url = await lab.watch(viewer_host, key, ice="turn", name="viewer")
    await stats_until(
        viewer_host, url, complete_from_join,
        "the viewer to have the stream from where it joined to the end", proc=viewer,
        path="timeline",
    )
    stats = await stats_until(viewer_host, url, lambda s: True, "stats")
    assert stats["blocks_from_writer"] >= 3
    viewer_routes: list[Route] = routes(viewer)
    assert viewer_routes and all(r.relayed for r in viewer_routes)
    assert routes(broadcaster) and all(r.relayed for r in routes(broadcaster))

    # coturn logs what each allocation relayed once it is deleted (the nodes delete theirs
    # when they leave). The stream crossed the viewer's allocation (bytes from a peer, rb) or
    # the broadcaster's (bytes to a peer, sb): the relay carried at least what the viewer got.
    assert await lab.stop(viewer) == 0
    await lab.stop(broadcaster)

    def relayed() -> int:
        return sum(u["rb"] + u["sb"] for u in lab.turn_usage())

    await _until(lambda: relayed() >= stats["bytes_down"] > 0,
                 f"coturn to report relaying the {stats['bytes_down']} bytes the viewer got", 30)
    # Every allocation used a credential of the hub: "<expiry>:<random id>" (coturn's REST
    # scheme; deploy/turnserver.conf has no static user).
    assert lab.turn_log is not None
    users = turn_usernames(lab.turn_log.read_text(errors="replace"))
    assert users and all(re.fullmatch(r"\d{10}:[0-9a-f]{16}", u) for u in users), users


async def test_a_dead_or_misconfigured_turn_server_is_named_once_and_peers_do_without_it(
    lab: Lab,  # noqa: F811
) -> None:
    """One viewer is given a TURN server that does not exist, another the right one with a wrong
    password: each says so in one line naming the cause, and both connect directly to the
    broadcaster and to each other (endpoint-independent NATs) with what still works."""
    await lab.start_redis()
    await lab.start_turn()
    await lab.start_hub()
    bc = lab.add_host("bc", "public")
    broadcaster, key = await lab.broadcast(bc, ice="stun")
    dead_turn = "198.18.0.250:3478"  # on the Internet bridge, but no host has it
    configs = {
        "eim1": (f"{lab.stun_url},turn:lab:lab-secret@{dead_turn}",
                 f"TURN server {dead_turn} did not answer within 5 s"),
        "eim2": (f"{lab.stun_url},turn:lab:wrong@{PUBLIC_IP}:3478",
                 f"TURN server {PUBLIC_IP}:3478 refused the credentials of user 'lab' (401"),
    }
    viewers = {}
    for name, (ice, _) in configs.items():
        host = lab.add_host(name, "eim")
        viewers[name] = (host, *await lab.watch(host, key, ice=ice, name=name))
    for name, (host, proc, url) in viewers.items():
        await stats_until(host, url, lambda s: s["blocks_have"] >= 3, f"{name} playing", proc=proc)
    await _until(
        lambda: {"bc", "eim2"} <= _direct_to(lab, viewers["eim1"][1])
        and {"bc", "eim1"} <= _direct_to(lab, viewers["eim2"][1]),
        "both viewers to connect directly to the broadcaster and to each other",
    )
    for name, (_, line) in configs.items():
        log = viewers[name][1].log.read_text()
        assert log.count(line) == 1, f"{name} should name its TURN problem once:\n{log}"
    assert broadcaster.running


async def test_without_turn_viewers_get_the_whole_stream_through_the_peers_they_can_reach(
    lab: Lab,  # noqa: F811
) -> None:
    """The broadcaster sits behind an endpoint-independent NAT and two viewers behind symmetric
    NATs: neither viewer can reach it nor each other; a viewer with a public address can reach
    everyone, and the stream reaches the other two through it alone."""
    await lab.start_redis()
    await lab.start_turn()
    await lab.start_hub()
    bc = lab.add_host("bc", "eim")
    open_host = lab.add_host("open", "public")
    broadcaster, key = await lab.broadcast(bc, ice="stun", duration=12)
    relay_viewer, relay_url = await lab.watch(open_host, key, ice="stun", name="open")
    await stats_until(open_host, relay_url, lambda s: s["blocks_have"] >= 1, "the open viewer")
    hidden = []
    for name in ("sym1", "sym2"):
        host = lab.add_host(name, "sym")
        hidden.append((host, *await lab.watch(host, key, ice="stun", name=name)))
    for host, proc, url in hidden:
        await stats_until(
            host, url, complete_from_join,
            f"{proc.name} to have the stream from where it joined to the end", timeout=90,
            proc=proc, path="timeline",
        )
        stats = await stats_until(host, url, lambda s: True, "stats")
        assert stats["blocks_from_writer"] == 0 and stats["blocks_from_peers"] >= 3
        assert {r.remote_ip for r in routes(proc)} == {open_host.ip}


async def test_nat_viewers_of_a_full_broadcaster_keep_playing_without_turn(lab: Lab) -> None:  # noqa: F811
    """The first lab's scenario: a public broadcaster with room for three neighbours, four
    viewers behind NATs (two endpoint-independent, two symmetric), STUN only. Every viewer stays
    up and gets every block: eviction never strands a viewer with no other path, a symmetric
    viewer whose only path is the broadcaster gets every block from it, failed dials are given
    up when ICE finds no path (not at the 15 s connect timeout) and the slot reused, and no
    playing viewer goes without a new block for long because of them."""
    await lab.start_redis()
    await lab.start_turn()
    await lab.start_hub()
    bc = lab.add_host("bc", "public")
    broadcaster, key = await lab.broadcast(bc, ice="stun", duration=30)
    viewers = []
    sampler = _GapSampler()
    for name, kind in (("eim1", "eim"), ("eim2", "eim"), ("sym1", "sym"), ("sym2", "sym")):
        host = lab.add_host(name, kind)
        viewers.append((host, *await lab.watch(host, key, ice="stun", name=name)))
        sampler.watch(host, viewers[-1][2], viewers[-1][1])
    try:
        for host, proc, url in viewers:
            await stats_until(
                host, url, complete_from_join,
                f"{proc.name} to have the stream from where it joined to the end", timeout=120,
                proc=proc, path="timeline",
            )
    finally:
        await sampler.stop()
    # A symmetric viewer cannot reach the other NAT viewers: those dials fail, and they fail
    # because ICE gave the path up, never by running into the connect timeout.
    failed = [
        line for _, proc, _ in viewers for line in proc.log.read_text().splitlines()
        if "connecting to" in line and "failed" in line
    ]
    assert failed, "expected dials between symmetric and other NAT viewers to fail"
    assert not [line for line in failed if "within" in line], "\n".join(failed)
    # The second symmetric viewer found the broadcaster full and still got a slot there.
    assert {"bc"} <= _direct_to(lab, viewers[3][1])
    for name, gap in sampler.worst().items():
        assert gap <= 4.0, f"{name} went {gap:.1f} s without a new block while playing"


class _GapSampler:
    """Polls each viewer's /stats while it plays and keeps the longest time between two
    increases of its block count (the broadcaster appends a block every part, 0.2 s)."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self._worst: dict[str, float] = {}

    def watch(self, host, url: str, proc: LabProcess) -> None:  # type: ignore[no-untyped-def]
        self._tasks.append(asyncio.ensure_future(self._poll(host, url, proc)))

    async def _poll(self, host, url: str, proc: LabProcess) -> None:  # type: ignore[no-untyped-def]
        have, since = 0, None
        while proc.running:
            try:
                stats = await http_json(host, url + "stats")
            except OSError:
                stats = {}
            now = time.monotonic()
            if stats.get("blocks_have", 0) > have:
                if since is not None and have > 0:
                    self._worst[proc.name] = max(self._worst.get(proc.name, 0.0), now - since)
                have, since = stats["blocks_have"], now
            if stats.get("ended") or stats.get("stream_ended"):
                return
            await asyncio.sleep(0.25)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def worst(self) -> dict[str, float]:
        return dict(self._worst)


async def test_nat_viewers_keep_playing_through_a_hub_restart_with_a_second_hub_on_redis(
    lab: Lab,  # noqa: F811
) -> None:
    """Two hubs on one Redis: the broadcaster (behind a NAT) and one viewer use the first, another
    viewer the second, and they form one swarm. The first hub goes down: everyone keeps playing,
    and a newcomer on the second hub still finds the stream. It comes back on the same address:
    the nodes announce themselves again and a newcomer on it finds them too."""
    second = 8001
    await lab.start_redis()
    await lab.start_turn()
    first_hub = await lab.start_hub()
    await lab.start_hub(port=second)
    bc = lab.add_host("bc", "eim")
    broadcaster, key = await lab.broadcast(bc, ice="turn")
    playing = []
    for name, kind, port in (("sym1", "sym", None), ("eim1", "eim", second)):
        host = lab.add_host(name, kind)
        hub = lab.hub_url_on(port) if port else None
        proc, url = await lab.watch(host, key, ice="turn", name=name, hub=hub)
        playing.append((host, proc, url))
    have = {}
    for host, proc, url in playing:
        stats = await stats_until(host, url, lambda s: s["blocks_have"] >= 3, f"{proc.name}", proc=proc)
        have[proc.name] = stats["blocks_have"]

    await lab.stop(first_hub)
    newcomer_host = lab.add_host("sym2", "sym")
    newcomer, newcomer_url = await lab.watch(
        newcomer_host, key, ice="turn", name="sym2", hub=lab.hub_url_on(second)
    )
    await stats_until(newcomer_host, newcomer_url, lambda s: s["blocks_have"] >= 3,
                      "a newcomer on the second hub to play while the first is down", proc=newcomer)
    for host, proc, url in playing:
        before = have[proc.name]
        stats = await stats_until(host, url, lambda s, b=before: s["blocks_have"] >= b + 5,
                                  f"{proc.name} to go on playing without the first hub", proc=proc)
        have[proc.name] = stats["blocks_have"]

    await lab.start_hub()
    late_host = lab.add_host("eim2", "eim")
    late, late_url = await lab.watch(late_host, key, ice="turn", name="eim2")
    await stats_until(late_host, late_url, lambda s: s["blocks_have"] >= 3,
                      "a newcomer on the restarted hub to play", proc=late)
    for host, proc, url in [*playing, (newcomer_host, newcomer, newcomer_url)]:
        before = have.get(proc.name, 0)
        await stats_until(host, url, lambda s, b=before: s["blocks_have"] >= b + 3,
                          f"{proc.name} to go on playing", proc=proc)
    assert broadcaster.running
