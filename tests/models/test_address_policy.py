"""The address check, address by address (pure: nothing is resolved or connected)."""

from __future__ import annotations

import ipaddress

import pytest

from models.address_policy import literal_address, refusal_reason

REFUSED = [
    "127.0.0.1", "127.255.255.254", "::1",
    "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.255", "192.168.0.1", "192.168.255.255",
    "169.254.169.254", "169.254.0.1", "fe80::1", "fe80::abcd%eth0",
    "100.64.0.1", "100.127.255.255",
    "fc00::1", "fd12:3456::1",
    "224.0.0.1", "239.255.255.255", "ff02::1",
    "0.0.0.0", "0.1.2.3", "::",
    "240.0.0.1", "255.255.255.255",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:192.168.1.1",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo whose client is 10.0.0.1
    "192.0.2.1", "198.51.100.1", "203.0.113.1",  # documentation
    "2001:db8::1",
]  # fmt: skip
ALLOWED = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "100.63.255.255", "172.32.0.1", "11.0.0.1"]


@pytest.mark.parametrize("address", REFUSED)
def test_refused(address):
    assert refusal_reason(ipaddress.ip_address(address.split("%")[0])) is not None


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address):
    assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f000001", "0x7f.1", "127.1", "0177.0.0.1", "017700000001", "0x7f.0.0.1", "10.1", "1"]
)
def test_odd_numeric_spellings_are_refused_before_any_lookup(host):
    with pytest.raises(ValueError, match="non-standard spelling"):
        literal_address(host)


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", "127.0.0.1"), ("[::1]", "::1"), ("::ffff:127.0.0.1", "::ffff:7f00:1"), ("10.0.0.1.", "10.0.0.1")],
)
def test_canonical_literals_are_parsed(host, expected):
    assert str(literal_address(host)) == expected


@pytest.mark.parametrize("host", ["example.com", "cafe.be", "0x.example", "1password.com", "123.example", "localhost"])
def test_hostnames_are_left_to_the_resolver(host):
    assert literal_address(host) is None
