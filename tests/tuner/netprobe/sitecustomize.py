"""A test instrument, not part of losstune: every Python process started with this folder on
PYTHONPATH imports it at start-up (Python's ``site`` module does), so the driver, Ray's workers,
Ray's own Python services and MLflow are all watched. When ``LOSSTUNE_NETLOG`` names a file, each
process appends JSON lines to it: one ``start`` record, then one record per ``connect()`` to an
address that is not loopback and per name lookup of a host other than this one. Without DNS a
connection to a named host never reaches ``connect()``, so the lookup is where it shows.

tests/tuner/test_privacy.py reads the file; its verdict (which addresses belong to this machine) is
made there, not here: this file only records.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys


def _cmdline() -> list[str]:
    try:  # sys.argv is not always set yet while site runs; /proc always knows
        with open("/proc/self/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a][:8]
    except OSError:
        return list(getattr(sys, "argv", []))[:8]


def _record(kind: str, **fields: object) -> None:
    line = json.dumps({"kind": kind, "pid": os.getpid(), "cmd": _cmdline(), **fields}, default=str) + "\n"
    try:  # one short O_APPEND write per record: lines from many processes never interleave
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return True
    except ValueError:
        return False


def _remote(address: object) -> str | None:
    """'host:port' of an AF_INET/AF_INET6 address that is not loopback (nor the unspecified address)."""
    if not (isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str)):
        return None  # AF_UNIX paths, netlink, ...
    host = address[0]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:  # a name: Python resolves it through getaddrinfo, recorded below
        return None if host.lower() in _LOCAL_NAMES else f"{host}:{address[1]}"
    if ip.is_loopback or ip.is_unspecified:
        return None
    return f"{host}:{address[1]}"


def _install() -> None:
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
    getaddrinfo, gethostbyname, gethostbyname_ex = socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex

    def _watch_connect(sock: socket.socket, address: object) -> None:
        where = _remote(address)
        if where:
            _record("connect", to=where, type=getattr(sock.type, "name", str(sock.type)))

    def _watch_lookup(call: str, host: object) -> None:
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if isinstance(host, str) and host and host.lower() not in _LOCAL_NAMES and not _is_ip(host):
            _record("lookup", name=host, call=call)

    def patched_connect(self, address):  # type: ignore[no-untyped-def]
        _watch_connect(self, address)
        return connect(self, address)

    def patched_connect_ex(self, address):  # type: ignore[no-untyped-def]
        _watch_connect(self, address)
        return connect_ex(self, address)

    def patched_getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        _watch_lookup("getaddrinfo", host)
        return getaddrinfo(host, *args, **kwargs)

    def patched_gethostbyname(host):  # type: ignore[no-untyped-def]
        _watch_lookup("gethostbyname", host)
        return gethostbyname(host)

    def patched_gethostbyname_ex(host):  # type: ignore[no-untyped-def]
        _watch_lookup("gethostbyname_ex", host)
        return gethostbyname_ex(host)

    socket.socket.connect = patched_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = patched_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = patched_getaddrinfo
    socket.gethostbyname = patched_gethostbyname
    socket.gethostbyname_ex = patched_gethostbyname_ex


_LOG = os.environ.get("LOSSTUNE_NETLOG")
if _LOG:
    _host = socket.gethostname().lower()
    _LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", _host,
                    _host.split(".", 1)[0]}
    _install()
    _record("start")
