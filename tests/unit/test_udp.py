"""The control plane's UDP socket (xdp_teredo/net/udp.py), on loopback only.

Loopback is not global unicast, so here the socket may receive from it but must
refuse to send to it; a successful send to a global address is tested inside a
namespace (tests/e2e/test_tunnel.py).
"""

import fcntl
import ipaddress
import os
import select
import socket

import pytest

from xdp_teredo.errors import RuntimeFailure
from xdp_teredo.net import udp


@pytest.fixture
def teredo_socket():
    with udp.TeredoSocket("127.0.0.1", 0) as sock:
        yield sock


@pytest.fixture
def peer():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def test_port_zero_gets_an_ephemeral_port(teredo_socket):
    host, port = teredo_socket.local_address
    assert str(host) == "127.0.0.1"
    assert 1024 <= port <= 65535
    assert repr(teredo_socket) == f"<TeredoSocket 127.0.0.1:{port}>"


def test_a_given_port_is_used(peer):
    free_port = peer.getsockname()[1]
    peer.close()
    with udp.TeredoSocket("127.0.0.1", free_port) as sock:
        assert sock.local_address[1] == free_port


def test_the_port_taken_is_a_runtime_failure(peer):
    port = peer.getsockname()[1]
    with pytest.raises(RuntimeFailure, match=rf"cannot bind .* to 127.0.0.1:{port}: "
                                             "Address already in use"):
        udp.TeredoSocket("127.0.0.1", port)


def test_an_unknown_device_is_a_runtime_failure():
    with pytest.raises(RuntimeFailure, match="on no-such-nic0"):
        udp.TeredoSocket("0.0.0.0", 0, device="no-such-nic0")


def test_socket_is_non_blocking_and_clears_df(teredo_socket):
    raw = socket.socket(fileno=socket.dup(teredo_socket.fileno()))
    try:
        assert fcntl.fcntl(raw.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        # linux/in.h: IP_MTU_DISCOVER 10, IP_PMTUDISC_DONT 0 (not in Python's socket)
        assert raw.getsockopt(socket.IPPROTO_IP, 10) == 0
        assert raw.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1
    finally:
        raw.close()


def test_nothing_waiting_is_none(teredo_socket):
    assert teredo_socket.recvfrom() is None


def test_receives_with_the_source(teredo_socket, peer):
    peer.sendto(b"\x60bubble", (str(teredo_socket.local_address[0]),
                                teredo_socket.local_address[1]))
    assert select.select([teredo_socket], [], [], 2.0)[0]
    received = teredo_socket.recvfrom()
    assert received == (b"\x60bubble", ipaddress.IPv4Address("127.0.0.1"),
                        peer.getsockname()[1])
    assert teredo_socket.received == 1


@pytest.mark.parametrize("destination", ["127.0.0.1", "10.0.0.1", "192.168.1.1",
                                         "172.16.0.1", "169.254.1.1", "224.0.0.253",
                                         "255.255.255.255", "0.0.0.0", "192.88.99.1"])
def test_non_global_destinations_are_refused_and_counted(teredo_socket, peer, destination):
    if destination == "127.0.0.1":
        port = peer.getsockname()[1]
    else:
        port = 3544
    assert teredo_socket.sendto(b"x", destination, port) is False
    assert teredo_socket.refusals == {udp.REFUSED_NOT_GLOBAL: 1}
    assert teredo_socket.sent == 0
    if destination == "127.0.0.1":
        with pytest.raises(socket.timeout):
            peer.recvfrom(100)          # and nothing left the socket


def test_a_send_error_is_counted_not_raised(teredo_socket):
    # UDP refuses destination port 0 (EINVAL) before anything is sent.
    assert teredo_socket.sendto(b"x", "192.0.2.1", 0) is False
    assert teredo_socket.refusals == {udp.REFUSED_SEND_ERROR: 1}


def test_use_after_close_is_a_runtime_failure():
    sock = udp.TeredoSocket("127.0.0.1", 0)
    sock.close()
    assert sock.closed
    assert repr(sock) == "<TeredoSocket closed>"
    with pytest.raises(RuntimeFailure):
        sock.sendto(b"x", "192.0.2.1", 3544)
    with pytest.raises(RuntimeFailure):
        sock.recvfrom()
