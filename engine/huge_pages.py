"""Model weights in 2 MiB pages (transparent huge pages), for the one big read of every token.

A decode step streams every weight once; the reference model's output matrix alone is 178 MB. In
4 KiB pages that stream walks the page tables and misses the TLB all along; in 2 MiB pages it does
not (one stream, in-process: 71 -> 78 tokens/s on a 2-vCPU EPYC VM; README, Performance).

llama.cpp maps a model file from a file offset that is not 2 MiB aligned, so its page cache cannot
be mapped in huge pages. Loaded into memory instead (no mmap), the weights live in anonymous memory,
which the kernel backs with huge pages where the range was advised MADV_HUGEPAGE before it was
touched (THP `madvise` mode, the common default; `always` needs no advice). llama.cpp allocates the
model's buffers first and then reads the tensors into them, calling the load's progress callback
before each tensor: at its first call the buffers are mapped and still empty, and `LoadAdvice`
advises every anonymous range that appeared since the load began. The server loads in worker
threads, whose malloc arenas cannot hold a block over 64 MiB: a real model's buffer is always a new
mapping. (A small one may reuse freed heap memory, which is not advised; it gains little.)

Linux only: elsewhere (or with THP `never`) a model is memory-mapped as before.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

log = logging.getLogger(__name__)

PAGE = 2 << 20  # the x86-64 PMD page size
MADV_HUGEPAGE = 14
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MAPS = Path("/proc/self/maps")
SMAPS = Path("/proc/self/smaps")

Range = tuple[int, int]


def thp_mode(path: Path = THP_ENABLED) -> str:
    """The kernel's THP mode ("always", "madvise", "never"), or "" where there is none."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else ""


def available() -> bool:
    """Whether anonymous memory can get huge pages here (so loading without mmap gains them)."""
    return thp_mode() in ("always", "madvise") and MAPS.is_file()


def anonymous_ranges(maps: str) -> list[Range]:
    """The private, writable, unnamed mappings in a /proc/<pid>/maps text, sorted."""
    out = []
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[1] == "rw-p" and fields[4] == "0":
            lo, _, hi = fields[0].partition("-")
            out.append((int(lo, 16), int(hi, 16)))
    return sorted(out)


def new_ranges(before: list[Range], after: list[Range]) -> list[Range]:
    """The parts of `after` that no range of `before` covered (a new mapping may have merged
    with an old neighbour into one range)."""
    out = []
    for lo, hi in after:
        cursor = lo
        for old_lo, old_hi in before:
            if old_hi <= cursor or old_lo >= hi:
                continue
            if old_lo > cursor:
                out.append((cursor, old_lo))
            cursor = max(cursor, old_hi)
        if cursor < hi:
            out.append((cursor, hi))
    return out


def whole_pages(lo: int, hi: int) -> Range | None:
    """The 2 MiB-aligned part of [lo, hi), or None when it holds no whole huge page."""
    start = (lo + PAGE - 1) // PAGE * PAGE
    end = hi // PAGE * PAGE
    return (start, end) if end > start else None


class LoadAdvice:
    """Advises the anonymous memory a model load maps, before the load fills it."""

    def __init__(self) -> None:
        self.advised: list[Range] = []
        self._done = False
        try:
            self._before = anonymous_ranges(MAPS.read_text())
        except OSError:  # /proc unreadable here: the load goes on in small pages
            self._done = True

    def advise(self) -> None:
        """Mark every anonymous range mapped since construction MADV_HUGEPAGE; once."""
        if self._done:
            return
        self._done = True
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for lo, hi in new_ranges(self._before, anonymous_ranges(MAPS.read_text())):
            pages = whole_pages(lo, hi)
            if pages is None:
                continue
            if libc.madvise(pages[0], pages[1] - pages[0], MADV_HUGEPAGE) == 0:
                self.advised.append(pages)
            else:
                log.debug("madvise(MADV_HUGEPAGE) failed: errno %d", ctypes.get_errno())

    def huge_bytes(self) -> tuple[int, int]:
        """(bytes in huge pages, bytes advised) of the advised ranges, read from smaps now."""
        total = sum(hi - lo for lo, hi in self.advised)
        if not self.advised:
            return 0, 0
        try:
            return _huge_in(SMAPS.read_text(), self.advised), total
        except OSError:
            return 0, total


def _huge_in(smaps: str, ranges: list[Range]) -> int:
    """AnonHugePages of the mappings that lie inside `ranges`, in bytes."""
    huge, inside = 0, False
    for line in smaps.splitlines():
        head = line.split(maxsplit=1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            lo_text, _, hi_text = head.partition("-")
            lo, hi = int(lo_text, 16), int(hi_text, 16)
            inside = any(r_lo <= lo and hi <= r_hi for r_lo, r_hi in ranges)
        elif inside and head == "AnonHugePages:":
            huge += int(line.split()[1]) * 1024
    return huge
