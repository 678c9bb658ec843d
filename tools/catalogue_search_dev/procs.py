"""What runs and what listens, read from Linux's /proc (no psutil).

`./dev ui` and `./dev stack status` use it to find every process Airflow
started (by session, process group and parentage) and who holds a port.
Processes of other users may be unreadable; they are skipped.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

LISTEN = "0A"  # the TCP state code of a listening socket in /proc/net/tcp


@dataclass(frozen=True)
class Stat:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str

    @property
    def zombie(self) -> bool:
        return self.state == "Z"


def stat(pid: int) -> Stat | None:
    """The process's parent, group, session and state; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name, in parentheses, may hold spaces
    return Stat(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0])


def all_stats() -> list[Stat]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := stat(int(name))) is not None:
            out.append(st)
    return out


def alive(pid: int) -> bool:
    st = stat(pid)
    return st is not None and not st.zombie


def session_members(sid: int) -> list[int]:
    """Live processes (zombies excluded) of session `sid`."""
    return sorted(st.pid for st in all_stats() if st.sid == sid and not st.zombie)


def group_members(pgid: int) -> list[int]:
    """Live processes (zombies excluded) of process group `pgid`."""
    return sorted(st.pid for st in all_stats() if st.pgid == pgid and not st.zombie)


def descendants(root: int, exclude: set[int] = frozenset()) -> list[int]:
    """Every live process below `root` by parentage, zombies excluded (their children included),
    leaving out the processes in `exclude` and everything below them."""
    children: dict[int, list[Stat]] = {}
    for st in all_stats():
        children.setdefault(st.ppid, []).append(st)
    out, todo = [], [st for st in children.get(root, []) if st.pid not in exclude]
    while todo:
        st = todo.pop()
        if st.pid in exclude:
            continue
        if not st.zombie:
            out.append(st.pid)
        todo.extend(children.get(st.pid, []))
    return sorted(out)


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _address(hex_addr: str) -> str:
    if len(hex_addr) == 8:  # IPv4, little-endian
        return socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(hex_addr, 16)))
    words = [struct.pack("<I", int(hex_addr[i : i + 8], 16)) for i in range(0, 32, 8)]
    return socket.inet_ntop(socket.AF_INET6, b"".join(words))


def _listening_sockets() -> list[tuple[str, int, int]]:
    """(address, port, socket inode) of every listening TCP socket, IPv4 and IPv6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, _, port_hex = fields[1].rpartition(":")
            if fields[3] == LISTEN:
                found.append((_address(addr), int(port_hex, 16), int(fields[9])))
    return found


def listeners(port: int) -> list[tuple[str, int]]:
    """(address, socket inode) of every TCP socket listening on `port`, IPv4 and IPv6."""
    return [(addr, inode) for addr, p, inode in _listening_sockets() if p == port]


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listening(pids: list[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket that one of `pids` listens on."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    return sorted((addr, port, owner[inode]) for addr, port, inode in _listening_sockets() if inode in owner)


def socket_owners(inodes: set[int]) -> dict[int, int]:
    """inode -> pid of a process holding that socket (readable processes only)."""
    owners: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and len(owners) < len(inodes):
            for inode in _socket_inodes(int(name)) & inodes:
                owners.setdefault(inode, int(name))
    return owners


def port_holders(port: int) -> list[tuple[str, int | None]]:
    """(listening address, pid or None when unreadable) for `port`."""
    found = listeners(port)
    owners = socket_owners({inode for _, inode in found})
    return [(addr, owners.get(inode)) for addr, inode in found]


def reap() -> None:
    """Collect this process's exited children (re-parented orphans included): no zombie is left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
