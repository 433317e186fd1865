"""`lumora-reload watch` run for real against a daemon on loopback: file
events from the operating system's watcher, a file that does not exist
yet, and a daemon that was down when the file was saved."""

import json
import os
import shutil

import pytest_twisted
from twisted.internet import endpoints

from lumora_reload import web
from tests.helpers import make_schema, with_text
from tests.test_cli import Proc

ensure = pytest_twisted.ensureDeferred


def watch(reactor, daemon, sid, path, *extra):
    return Proc(reactor, ["-m", "lumora_reload", "--url", daemon.url, "watch", sid, str(path),
                          "--debounce", "50", *extra])


async def saved(proc, session, path, text):
    """Write the schema with `text` to `path`; once `proc` says it pushed,
    the session holds that schema."""
    pushed = proc.wait_line(lambda line: "pushed" in line)
    path.write_text(json.dumps(with_text(make_schema(), text)))
    await pushed
    assert session.schema == with_text(make_schema(), text)


@ensure
async def test_a_same_size_save_within_the_timestamp_resolution_is_pushed(daemon, tmp_path, reactor):
    """A save that keeps size, inode and modification time (a coarse
    filesystem clock) is still seen and pushed."""
    sid = await daemon.new_session()
    session = daemon.server.get_session(sid)
    path = tmp_path / "app.json"
    schema = with_text(make_schema(), "AAAA")
    path.write_text(json.dumps(schema))
    proc = watch(reactor, daemon, sid, path)
    try:
        await proc.wait_line(lambda l: "pushed" in l)
        before = os.stat(path)
        pushed = proc.wait_line(lambda l: "pushed" in l)
        changed = with_text(schema, "BBBB")
        with open(path, "r+") as f:  # in place: same inode, same size
            f.write(json.dumps(changed))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same timestamp
        after = os.stat(path)
        assert (after.st_size, after.st_ino, after.st_mtime_ns) == (before.st_size, before.st_ino,
                                                                     before.st_mtime_ns)
        await pushed
        assert session.schema == changed
    finally:
        await proc.stop()


@ensure
async def test_a_touch_is_a_change(tmp_path, reactor):
    """`touch app.json` (its times changed, nothing written) reports a
    change: the usual way to have a file read again, say after it was
    written where the kernel reports no writes (a network or container
    mount). `watch` then pushes it if its content changed."""
    from twisted.internet import defer

    from lumora_reload.cli.watcher import FileWatcher
    path = tmp_path / "app.json"
    path.write_text("{}")
    seen = defer.Deferred()
    watcher = FileWatcher(reactor, str(path), lambda kind, changed: seen.called or seen.callback((kind, changed)))
    watcher.start()
    try:
        reactor.callLater(0.2, os.utime, path)
        assert await seen.addTimeout(10, reactor) == ("changed", str(path))
    finally:
        watcher.stop()


@ensure
async def test_a_missing_file_is_reported_and_pushed_when_it_appears(daemon, tmp_path, reactor):
    """Watching a file that does not exist says so, then pushes it once
    created; deleted and written again, the same."""
    sid = await daemon.new_session()
    session = daemon.server.get_session(sid)
    path = tmp_path / "app.json"
    proc = watch(reactor, daemon, sid, path)
    try:
        line = await proc.wait_line(lambda l: "does not exist" in l)
        assert "app.json" in line and "waiting for it" in line
        pushed = proc.wait_line(lambda l: "pushed" in l)
        tmp = tmp_path / "app.json.tmp"
        tmp.write_text(json.dumps(make_schema()))
        os.replace(tmp, path)
        await pushed
        assert session.sequence == 1 and session.schema == make_schema()

        deleted = proc.wait_line(lambda line: "was deleted; waiting for it" in line)
        path.unlink()
        await deleted
        await saved(proc, session, path, "back")
    finally:
        await proc.stop()


@ensure
async def test_a_save_by_rename_is_not_reported_as_a_deletion(daemon, tmp_path, reactor):
    """An editor that renames the file away and writes a new one (vim's
    backup) has saved it: pushed, and nothing said about a deletion."""
    sid = await daemon.new_session()
    session = daemon.server.get_session(sid)
    path = tmp_path / "app.json"
    path.write_text(json.dumps(make_schema()))
    proc = watch(reactor, daemon, sid, path)
    try:
        await proc.wait_line(lambda l: "pushed" in l)
        pushed = proc.wait_line(lambda l: "pushed" in l)
        backup = tmp_path / "app.json~"
        os.rename(path, backup)
        path.write_text(json.dumps(with_text(make_schema(), "saved by vim")))
        backup.unlink()
        await pushed
        assert session.schema == with_text(make_schema(), "saved by vim")
    finally:
        await proc.stop()
    assert "deleted" not in proc.out.decode(), proc.out.decode()


@ensure
async def test_a_save_to_the_file_a_symlink_names_is_pushed(daemon, tmp_path, reactor):
    """PATH a symbolic link to a file in another folder (a build output):
    a save of that file is pushed, and so is one after the link is pointed
    at a file in a third folder."""
    sid = await daemon.new_session()
    session = daemon.server.get_session(sid)
    (tmp_path / "build").mkdir()
    target = tmp_path / "build" / "out.json"
    target.write_text(json.dumps(make_schema()))
    link = tmp_path / "app.json"
    link.symlink_to(target)
    proc = watch(reactor, daemon, sid, link)
    try:
        await proc.wait_line(lambda l: "pushed" in l)
        await saved(proc, session, target, "built")

        (tmp_path / "other").mkdir()
        moved = tmp_path / "other" / "out.json"
        moved.write_text(json.dumps(with_text(make_schema(), "moved")))
        pushed = proc.wait_line(lambda l: "pushed" in l)
        tmp = tmp_path / "app.json.new"
        tmp.symlink_to(moved)
        os.replace(tmp, link)
        await pushed
        assert session.schema == with_text(make_schema(), "moved")
        await saved(proc, session, moved, "moved, then saved")
    finally:
        await proc.stop()


@ensure
async def test_a_symlink_into_a_rebuilt_folder_is_followed(daemon, tmp_path, reactor):
    """PATH a link to build/out.json, and the build removes and makes its
    folder again (a clean build): the new file is pushed, and so is every
    save after it; so too when the folder did not exist at the start."""
    sid = await daemon.new_session()
    session = daemon.server.get_session(sid)
    build, link = tmp_path / "build", tmp_path / "app.json"
    link.symlink_to(build / "out.json")  # dangling: nothing built yet
    proc = watch(reactor, daemon, sid, link)
    try:
        await proc.wait_line(lambda l: "does not exist" in l)
        for text in ("first build", "clean build", "saved"):
            pushed = proc.wait_line(lambda l: "pushed" in l)
            if text == "clean build":
                shutil.rmtree(build)
            build.mkdir(exist_ok=True)
            (build / "out.json").write_text(json.dumps(with_text(make_schema(), text)))
            await pushed
            assert session.schema == with_text(make_schema(), text)
    finally:
        await proc.stop()


@ensure
async def test_a_save_made_while_the_daemon_was_down_is_pushed_when_it_is_back(daemon, tmp_path, reactor):
    """The latest content goes out once the daemon answers again."""
    sid = await daemon.new_session()
    session = daemon.server.get_session(sid)
    path = tmp_path / "app.json"
    schema = make_schema()
    path.write_text(json.dumps(schema))
    proc = watch(reactor, daemon, sid, path)
    try:
        await proc.wait_line(lambda l: "pushed" in l)
        port = daemon.port.getHost().port
        await daemon.port.stopListening()
        reported = proc.wait_line(lambda l: "cannot reach the daemon" in l)
        path.write_text(json.dumps(with_text(schema, "while down")))
        await reported
        assert session.sequence == 1
        pushed = proc.wait_line(lambda l: "pushed" in l)
        endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
        daemon.port = await endpoint.listen(web.site(daemon.server, reactor))
        await pushed  # no further save: the one made while it was down
        assert session.schema == with_text(schema, "while down")
    finally:
        await proc.stop()


def test_scratch_files_and_dependency_folders_are_not_sources(tmp_path):
    """Folder mode skips hidden files, editor scratch files and dependency folders."""
    from lumora_reload.cli.watcher import is_scratch

    root = str(tmp_path)
    for name in ("App.tsx", "screens/Home.tsx"):
        assert not is_scratch(os.path.join(root, name), root), name
    for name in (".App.tsx.swp", "App.tsx~", ".#App.tsx", "4913", "App.tsx.tmp", ".git/index",
                 "node_modules/x/index.js", "dist/app.js", "build/out.json", "__pycache__/a.pyc"):
        assert is_scratch(os.path.join(root, name), root), name


@ensure
async def test_a_link_pointed_back_into_the_watched_folder_drops_the_other_folders_watch(tmp_path, reactor):
    """No watch is left on a folder the link no longer names; and
    watchdog's error for a watch stopped with events in hand (a removed
    folder) is not printed: nothing is lost by it."""
    import logging

    from twisted.internet import defer, task

    from lumora_reload.cli.watcher import FileWatcher
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "out.json").write_text("{}")
    (tmp_path / "here.json").write_text("{}")
    link = tmp_path / "app.json"
    link.symlink_to(tmp_path / "build" / "out.json")
    changes = defer.DeferredQueue()
    watcher = FileWatcher(reactor, str(link), lambda kind, path: changes.put(kind))
    watcher.start()
    try:
        assert watcher._link_folder == str(tmp_path / "build")
        await task.deferLater(reactor, 0.2, lambda: None)
        tmp = tmp_path / "app.json.new"
        tmp.symlink_to(tmp_path / "here.json")
        os.replace(tmp, link)
        assert await changes.get().addTimeout(10, reactor) == "changed"
        assert watcher._link_folder is None and watcher._link_watch is None
    finally:
        watcher.stop()
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    inotify = logging.getLogger("watchdog.observers.inotify")
    inotify.addHandler(handler)
    try:
        inotify.error("InotifyEmitter.queue_events() called when the thread is inactive")
        inotify.error("something else")
    finally:
        inotify.removeHandler(handler)
    assert [r.getMessage() for r in seen] == ["something else"]
