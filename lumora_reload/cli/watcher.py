"""File events from the operating system (watchdog: inotify, FSEvents,
kqueue or ReadDirectoryChangesW), delivered on the reactor, and the
debouncer that turns a burst of them into one change.

Events, not polling: a poll that compares size and modification time
misses a save that keeps both (an in-place write within the filesystem's
timestamp resolution); the kernel reports every write."""

import logging
import os

# editors' swap, backup and temporary files: not the user's sources
_SCRATCH_SUFFIXES = ("~", ".swp", ".swx", ".swo", ".tmp", ".part", ".crdownload")
_SKIPPED_DIRS = {"node_modules", "__pycache__", "build", "dist"}


def is_scratch(path, root):
    """Whether a changed `path` under the watched directory `root` is not a
    source: hidden files and folders, editor scratch files, dependency and
    build folders."""
    relative = os.path.relpath(path, root)
    parts = relative.split(os.sep)
    if any(p.startswith(".") or p in _SKIPPED_DIRS for p in parts[:-1]):
        return True
    name = parts[-1]
    return name.startswith((".", "#")) or name.endswith(_SCRATCH_SUFFIXES) or name.isdigit()


class _WatchStopped(logging.Filter):
    """Drops watchdog's error that a watch stopped while its thread still
    had events to hand over (a folder a link names, removed by a clean
    build): nothing is lost, and the CLI has no log, so Python would print
    it raw to the terminal."""

    def filter(self, record):
        return "called when the thread is inactive" not in record.getMessage()


_STOPPED = _WatchStopped()


class FileWatcher:
    """Watches `path` — one file (its directory is watched, so a file
    replaced by rename or created later is seen; for a symbolic link, the
    directory of the file it names too, followed when the link is pointed
    elsewhere or, if it sits in the watched directory, when a clean build
    removes and makes it again) or a directory tree — and calls
    ``on_change(kind, changed_path)`` on the reactor thread, `kind` being
    "changed" or "deleted"."""

    def __init__(self, reactor, path, on_change):
        self.reactor = reactor
        self.path = os.path.abspath(path)
        self.on_change = on_change
        self.is_dir = os.path.isdir(self.path)
        self._observer = None
        self._handler = None
        self._events = None
        self._target = self.path  # the file a symbolic link names
        self._root = None  # the folder watched from the start
        self._link_folder = None  # the folder a link names, and its watch
        self._link_watch = None

    def start(self):
        from watchdog.events import (
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileAttribEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers import Observer

        # writes, creations, deletions, renames and changed times (`touch`,
        # the usual way to have a file read again) only: not a file or
        # folder opened or closed unwritten, which watching a tree itself
        # causes (reading each folder), enough of them to overflow the
        # kernel's queue in a tree with node_modules, and an overflow means
        # reading every folder again
        events = [FileAttribEvent, FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileModifiedEvent,
                  FileMovedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent]  # the folder a link names

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                watcher._event(event)

        root = self.path if self.is_dir else os.path.dirname(self.path)
        logging.getLogger("watchdog.observers.inotify").addFilter(_STOPPED)
        observer = Observer()
        observer.daemon = True
        self._handler = Handler()
        self._events = events
        observer.schedule(self._handler, root, recursive=self.is_dir, event_filter=events)
        self._root = os.path.realpath(root)
        self._observer = observer
        if not self.is_dir:
            self._follow_link()
        observer.start()

    def _follow_link(self, announce=False):
        """Watch the folder of the file `path` names, should it be a link
        (again on each event: the link may name another file now, or its
        folder may have been removed and made again by a clean build). On
        the observer's thread once it runs."""
        target = os.path.realpath(self.path)
        self._target = target
        folder = os.path.dirname(target)
        observer = self._observer
        if observer is None or folder == self._link_folder:
            return
        self._unfollow()
        if folder == self._root or not os.path.isdir(folder):
            # watched already; or not there yet: made in the watched folder,
            # its creation brings us back (elsewhere, the next event there)
            return
        try:
            self._link_watch = observer.schedule(self._handler, folder, recursive=False, event_filter=self._events)
        except OSError:
            return  # a folder that cannot be watched: changes to the link itself still are
        self._link_folder = folder
        if announce and os.path.exists(target):
            # written before its new folder was watched (a build makes the
            # folder and writes at once): that write went unseen
            self.reactor.callFromThread(self.on_change, "changed", self.path)

    def _unfollow(self):
        watch, self._link_watch, self._link_folder = self._link_watch, None, None
        if watch is not None and self._observer is not None:
            try:
                self._observer.unschedule(watch)
            except Exception:  # a folder already gone: its watch went with it
                pass

    def stop(self):
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(5)

    def _relevant(self, path):
        path = os.fsdecode(path)
        if self.is_dir:
            return path.startswith(self.path + os.sep) and not is_scratch(path, self.path)
        return path == self.path or os.path.realpath(path) == self._target

    def _event(self, event):
        # on the observer's thread: decide, then hand over to the reactor
        if event.is_directory:
            if not self.is_dir:
                # the folder a link names removed, or made again (a clean
                # build): its watch is stale
                paths = {os.path.realpath(os.fsdecode(p)) for p in (event.src_path, event.dest_path) if p}
                if self._link_folder in paths:
                    self._unfollow()
                self._follow_link(announce=True)
            return
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.event_type == "moved":
            if self._relevant(event.dest_path):
                self._deliver("changed", os.fsdecode(event.dest_path))
            elif self._relevant(event.src_path):
                self._deliver("deleted", os.fsdecode(event.src_path))
            return
        if self._relevant(event.src_path):
            kind = "deleted" if event.event_type == "deleted" else "changed"
            self._deliver(kind, os.fsdecode(event.src_path))

    def _deliver(self, kind, path):
        if not self.is_dir:
            self._follow_link()
            path = self.path  # what the user named, link or not
        self.reactor.callFromThread(self.on_change, kind, path)


class Debouncer:
    """Calls `fire()` once `delay` seconds have passed without a `poke`.
    Runs on an injected clock (`task.Clock` in tests)."""

    def __init__(self, clock, delay, fire):
        self.clock = clock
        self.delay = delay
        self.fire = fire
        self._call = None

    def poke(self):
        if self._call is not None and self._call.active():
            self._call.reset(self.delay)
        else:
            self._call = self.clock.callLater(self.delay, self._fired)

    def _fired(self):
        self._call = None
        self.fire()

    @property
    def pending(self):
        return self._call is not None and self._call.active()

    def cancel(self):
        if self.pending:
            self._call.cancel()
        self._call = None
