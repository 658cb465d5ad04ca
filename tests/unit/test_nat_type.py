"""The NAT type the client reports (teredo/nat_type.py)."""

import ipaddress
import random

from xdp_teredo.teredo.nat_type import NatProbe, classify

IPv4 = ipaddress.IPv4Address
LOCAL = (IPv4("10.2.1.2"), 40000)
MAPPED = (IPv4("198.51.100.17"), 40000)


def test_not_behind_a_nat():
    public = (IPv4("203.0.113.10"), 3544)
    assert classify(public, public, public).type == "none"


def test_same_mapping_for_both_server_addresses_is_restricted():
    verdict = classify(LOCAL, MAPPED, MAPPED)
    assert verdict.type == "restricted" and verdict.port_preserving
    assert verdict.text() == "restricted (port-preserving)"


def test_another_mapping_is_symmetric_with_rfc6081_subcases():
    random_port = classify(LOCAL, (MAPPED[0], 51234), (MAPPED[0], 7))
    assert random_port.type == "symmetric" and not random_port.port_preserving
    assert not random_port.sequential and random_port.text() == "symmetric"
    sequential = classify(LOCAL, (MAPPED[0], 51234), (MAPPED[0], 51235))
    assert sequential.sequential and sequential.text() == "symmetric (sequential ports)"
    preserving = classify(LOCAL, MAPPED, (MAPPED[0], 60001))
    assert preserving.type == "symmetric" and preserving.port_preserving


def test_no_answer_is_unknown():
    assert classify(LOCAL, MAPPED, None).type == "unknown"


def test_probe_takes_only_its_own_answer_and_times_out():
    probe = NatProbe(LOCAL, MAPPED, IPv4("192.0.2.2"), 100.0, rng=random.Random(1).randbytes)
    assert probe.result(101.0).type == "probing"
    assert not probe.on_answer(b"\0" * 8, MAPPED[0], 1)
    assert probe.on_answer(probe.nonce, MAPPED[0], 50001)
    assert probe.result(101.0).type == "symmetric"
    late = NatProbe(LOCAL, MAPPED, IPv4("192.0.2.2"), 100.0)
    assert late.result(104.0).type == "unknown"
    assert probe.result(101.0).describe()["secondary_mapped"] == "198.51.100.17:50001"


def test_status_text_names_the_type_as_windows_does():
    from xdp_teredo.daemon import render

    detail = classify(LOCAL, MAPPED, (MAPPED[0], 40001)).describe()
    lines = render.status_lines({"state": "qualified", "nat_type": detail["type"],
                                 "nat_detail": detail})
    assert "nat_type   symmetric (port-preserving, sequential ports)" in lines
    assert "nat_type   -" in render.status_lines({"state": "offline"})
