"""Watching the processes of one ``rainstorm run`` through /proc: peak RSS
and CPU time per role (high_cardinality.py, scaling.py)."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from rainstorm.coordinator.json_pool import PROCESS_NAME


class Watch:
    """Polls /proc: the peak RSS (VmHWM) and the CPU time used so far of a
    process, its descendants and ``extra``, each with its role in a
    ``rainstorm run`` (coordinator, worker, server, json, isolated, other).
    A process's last sample stands for it after it exits, so its CPU time
    can miss up to ``period_s`` of its end."""

    def __init__(self, root: int, extra: tuple[int, ...] = (), period_s: float = 0.02) -> None:
        self.root, self.extra, self.period_s = root, extra, period_s
        self.peak_kb: dict[int, int] = {}
        self.cpu_ticks: dict[int, int] = {}
        self.role: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _children(self) -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                kids.setdefault(ppid, []).append(int(d))
        return kids

    def _loop(self) -> None:
        while not self._stop.is_set():
            kids = self._children()
            todo, seen = [self.root, *self.extra], []
            while todo:
                pid = todo.pop()
                seen.append(pid)
                todo += kids.get(pid, [])
            for pid in seen:
                self._sample(pid)
            self._stop.wait(self.period_s)

    def _sample(self, pid: int) -> None:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return
        if len(stat) > 12:  # utime and stime, fields 14 and 15 of stat
            self.cpu_ticks[pid] = int(stat[11]) + int(stat[12])
        m = re.search(r"VmHWM:\s+(\d+) kB", status)
        if not m:
            return  # a zombie: its last value stays
        self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), int(m.group(1)))
        if self.role.get(pid) == "worker" and self._comm(pid) == PROCESS_NAME:
            self.role[pid] = "json"  # seen before its pool's initializer named it
        if pid not in self.role:
            if b"valkey-server" in cmd or b"redis-server" in cmd:
                self.role[pid] = "server"
            elif pid == self.root:
                self.role[pid] = "coordinator"
            elif self._comm(pid) == PROCESS_NAME:  # a JSON encoder of the result's end
                self.role[pid] = "json"
            elif b"rainstorm" in cmd:  # forked by the CLI: a worker; deeper: a worker's
                self.role[pid] = "worker" if self._ppid(pid) == self.root else "isolated"
            else:
                self.role[pid] = "other"

    @staticmethod
    def _comm(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return ""

    @staticmethod
    def _ppid(pid: int) -> int:
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return -1

    def stop(self) -> dict[str, float]:
        """Peak RSS in MB per process: coordinator, worker1.., server."""
        self._stop.set()
        self._thread.join(5)
        out: dict[str, float] = {}
        n = 0
        for pid in sorted(self.peak_kb):
            role = self.role.get(pid, "other")
            if role == "worker":
                n += 1
                role = f"worker{n}"
            mb = round(self.peak_kb[pid] / 1024, 1)
            if role == "isolated":  # a worker's fork for a suspect entry (rainstorm.worker.isolate)
                out["isolated"] = max(out.get("isolated", 0.0), mb)
                out["isolated_forks"] = out.get("isolated_forks", 0) + 1
            elif role == "json":  # the CLI's forks that encode a large result (json_pool)
                out["json"] = max(out.get("json", 0.0), mb)
            elif role != "other":
                out[role] = mb
        return out

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds per role (summed over its processes), as last sampled;
        call after :meth:`stop`."""
        tick = os.sysconf("SC_CLK_TCK")
        out: dict[str, float] = {}
        for pid, ticks in self.cpu_ticks.items():
            role = self.role.get(pid, "other")
            out[role] = round(out.get(role, 0.0) + ticks / tick, 2)
        return out

