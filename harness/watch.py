"""The held-out splits while the child runs: no file of the val or test split is opened, by any process,
but by the child's own validations (VAL = True), which decode each val image once and keep it. Linux inotify
sees every process's opens and needs no privileges.

The child gets the val split as a view of hard links in its run folder (dataset.views), and the harness's
other readers (the supervisor's validation, another agent's run, `progress --test`) read through views of
their own: during a run nothing legitimate opens the dataset's own val and test folders.
"""

import collections
import ctypes
import os
import select
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from harness import dataset, runtime
from harness.common import HarnessError

IN_OPEN, IN_Q_OVERFLOW, IN_ISDIR = 0x20, 0x4000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
UNCOUNTED = 10**9  # DDP's validations read the val split through Ultralytics' loader, once a validation
LABEL_CHECK = 2  # opens of a val image by Ultralytics' label check (a JPEG's end marker is read apart)
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
SHOWN = 3


class OpenWatch:
    """Counts the opens of the files in some folders and their subfolders, by any process, from its start to
    stop()."""

    def __init__(self, folders):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.folders = {}  # watch descriptor -> folder
        for folder in folders:
            for d, _, _ in os.walk(folder):
                wd = libc.inotify_add_watch(self.fd, os.fsencode(d), IN_OPEN)
                if wd < 0:
                    raise OSError(ctypes.get_errno(), f"inotify_add_watch failed for {d}")
                self.folders[wd] = d
        self.opens, self.overflow = collections.Counter(), False
        self.stop_read, self.stop_write = os.pipe()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            ready = select.select([self.fd, self.stop_read], [], [])[0]
            self._drain()
            if self.stop_read in ready:
                return

    def _drain(self):
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            at = 0
            while at < len(data):
                wd, mask, _, length = EVENT.unpack_from(data, at)
                name = data[at + EVENT.size:at + EVENT.size + length].split(b"\0", 1)[0]
                at += EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    self.overflow = True
                elif name and not mask & IN_ISDIR:
                    self.opens[os.path.join(self.folders[wd], os.fsdecode(name))] += 1

    def stop(self):
        """Stop watching. Returns ({path: opens}, whether the kernel dropped events)."""
        os.write(self.stop_write, b"x")
        self.thread.join(10)
        for fd in (self.fd, self.stop_read, self.stop_write):
            os.close(fd)
        return dict(self.opens), self.overflow


@dataclass(frozen=True)
class Guard:
    """What a run may open of the held-out splits: nothing of `closed` (the dataset's own val and test
    folders), and at most `allowance` opens of each file of `view` (the child's view of the val split)."""
    closed: dict          # {split name: [folders]}
    view: list            # the child's val folders (images, labels); [] without a view
    allowance: int        # opens of each view file: 0 with VAL = False


def reads(opens, guard):
    """['<split> file <path> opened N times ...'] of the opens that break the guard, the worst first."""
    found = []
    for path, n in opens.items():
        split = next((s for s, folders in guard.closed.items() if under(path, folders)), None)
        if split:
            found.append((n, f"the {split} split's {path} opened {n} time{'s' * (n > 1)}"))
        elif under(path, guard.view) and n > guard.allowance:
            found.append((n, f"the val split's {path} opened {n} time{'s' * (n > 1)}, past the "
                             f"validations' {guard.allowance}"))
    return [text for _, text in sorted(found, reverse=True)]


def under(path, folders):
    return any(Path(path).is_relative_to(f) for f in folders)


def check(opens, overflow, guard):
    """Raise HarnessError when the watched opens break the guard, naming the files."""
    if overflow:
        raise HarnessError("the watch on the val and test splits lost events (too many opens at once), so "
                           "this run cannot show it kept away from them; train.py must not read them")
    if found := reads(opens, guard):
        more = f" ({len(found) - SHOWN} more files)" if len(found) > SHOWN else ""
        raise HarnessError("the held-out splits were read while train.py ran: "
                           f"{'; '.join(found[:SHOWN])}{more}. Training reads the train split only, and only "
                           "the validations of VAL = True read the val split, each image once; train.py must "
                           "not open them (by any process)")


class HeldOut:
    """The watch on the held-out splits for one run: started before the child, checked after it. Without a
    view the child reads the dataset's own val folder, which is then watched as the view would be."""

    def __init__(self, stats, view, first_of_night):
        val = [stats["val"].folder, dataset.label_folder(stats["val"].folder)]
        self.view = [view, dataset.label_folder(view)] if view else val
        self.closed = {"val": val} if view else {}
        if "test" in stats:
            self.closed["test"] = [stats["test"].folder, dataset.label_folder(stats["test"].folder)]
        # Ultralytics checks each image and label once more where its label cache is missing; the night's
        # first run checks them afresh, so that no cache of another night's files is used.
        labels = dataset.split_files(self.view[0])[1]
        cache = runtime.labels_cache(labels[0].parent.with_suffix(".cache")) if labels and labels[0] else None
        if cache and first_of_night:
            cache.unlink(missing_ok=True)
        self.cache_missing = bool(cache) and not cache.is_file()
        self.watch = OpenWatch([*self.view, *(f for fs in self.closed.values() for f in fs)])

    def check(self, train_start):
        """Stop watching; raise HarnessError when the run read what it must not. train_start: the child's
        first-step report (VAL = True and DDP there), None if it never trained."""
        val, ddp = bool(train_start and train_start.get("val")), bool(train_start and train_start.get("ddp"))
        allowance = UNCOUNTED if val and ddp else (1 + LABEL_CHECK * self.cache_missing) if val else 0
        check(*self.watch.stop(), Guard(self.closed, self.view, allowance))
