"""`python -m bench schedules --trace`: reading a replica's broker traffic from strace."""

from __future__ import annotations

from bench.sendtrace import broker_calls, byte_percentiles

TRACE = """\
4101  1765000000.100000 write(7<TCP:[127.0.0.1:40000->127.0.0.1:1883]>, "2\\30\\0"..., 600) = 600
4101  1765000000.100500 sendto(9<TCP:[127.0.0.1:40002->127.0.0.1:5432]>, "Q", 90, 0, NULL, 0) = 90
4101  1765000000.101000 read(7<TCP:[127.0.0.1:40000->127.0.0.1:1883]>, "@\\2\\0\\1"..., 65536) = 8
4101  1765000000.102000 recvfrom(9<TCP:[127.0.0.1:40002->127.0.0.1:5432]>, "C", 99, 0, 0, 0) = 13
4101  1765000000.103000 write(7<TCP:[127.0.0.1:40000->127.0.0.1:1883]>, "2", 400 <unfinished ...>
4101  1765000000.104000 write(7<TCP:[127.0.0.1:40000->127.0.0.1:1883]>, "2\\30\\0"..., 400) = 400
4101  1765000000.105000 read(7<TCP:[127.0.0.1:40000->127.0.0.1:1883]>, "@\\2\\0\\3"..., 65536) = 8
"""


def test_only_the_broker_socket_counts_and_unfinished_calls_are_left_out() -> None:
    writes, reads = broker_calls(TRACE, 1883)
    assert writes == [(1765000000.1, 600), (1765000000.104, 400)]
    assert reads == [(1765000000.101, 8), (1765000000.105, 8)]


def test_another_port_is_another_connection() -> None:
    writes, reads = broker_calls(TRACE, 5432)
    assert writes == [(1765000000.1005, 90)]
    assert reads == [(1765000000.102, 13)]


def test_percentiles_are_shares_of_the_bytes_after_the_origin() -> None:
    calls = [(10.020, 500), (10.001, 100), (10.050, 400)]
    assert byte_percentiles(calls, origin=10.0) == {
        "first": 1.0,
        "p50": 20.0,
        "p95": 50.0,
        "p99": 50.0,
        "p100": 50.0,
    }
