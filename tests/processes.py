"""Watching processes from the tests (not a test module): the live processes of a session or the children of
a process, read from /proc (Linux), with zombies left out: a process that has ended but was not yet reaped
counts as gone."""

from __future__ import annotations

from pathlib import Path


def _processes() -> dict[int, tuple[str, int, int, int, str]]:
    """Every live process: pid -> (state, parent pid, process group, session, command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # it ended meanwhile
            continue
        state, ppid, group, session = stat[stat.rindex(")") + 2:].split()[:4]
        if state not in "ZX":
            found[int(entry.name)] = (state, int(ppid), int(group), int(session), command)
    return found


def session_processes(sid: int) -> dict[int, tuple[int, str]]:
    """The live processes of session ``sid``: pid -> (process group, command line)."""
    return {pid: (group, command) for pid, (_, _, group, session, command) in _processes().items()
            if session == sid}


def child_processes(parent: int) -> dict[int, tuple[int, str]]:
    """The live children of process ``parent``: pid -> (process group, command line)."""
    return {pid: (group, command) for pid, (_, ppid, group, _, command) in _processes().items()
            if ppid == parent}


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (exists and is not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] not in "ZX"
