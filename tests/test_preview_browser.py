"""The browser preview and the dashboard in a real headless Chromium, against
a real `twistd -n lumora-reload` on a loopback port (SQLite data dir).

One browser for the module; the daemon is killed and started again on the
same port and data dir by the resume test. Skipped without chromium or
Playwright (`.ci/run` installs both).
"""

import copy
import json
import pathlib
import time

import pytest
from hypothesis import given, settings

from lumora_reload import schema as S
from tests import browser
from tests.helpers import make_schema, node, with_text
from tests.test_schema import edits

VECTORS = json.loads((pathlib.Path(__file__).parent / "data" / "checksum-vectors.json").read_text())
SAMPLE = json.loads((pathlib.Path(__file__).parent.parent / "examples" / "sample-app.json").read_text())
WAIT = browser.WAIT_MS


@pytest.fixture(scope="module")
def chromium():
    start = browser.sync_playwright()
    with start() as playwright:
        instance = browser.launch(playwright)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = browser.Twistd(tmp_path_factory.mktemp("data")).start()
    yield d
    d.stop()


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 900, "height": 1000})
    p = context.new_page()
    p.set_default_timeout(WAIT)
    yield p
    context.close()


@pytest.fixture(scope="module")
def engine(chromium):
    """A page with only the preview's schema code loaded (no daemon)."""
    from lumora_reload.preview import static_file

    context = chromium.new_context()
    p = context.new_page()
    p.set_content("<!doctype html><title>engine</title>")
    p.add_script_tag(content=static_file("schema.js").decode())
    yield p
    context.close()


def open_preview(page, daemon, session_id, sequence=None):
    page.goto(f"{daemon.url}/preview/{session_id}")
    if sequence is not None:
        wait_sequence(page, sequence)
    else:
        page.wait_for_function("() => document.body.dataset.status === 'live'")


def wait_sequence(page, sequence):
    page.wait_for_function(f"() => document.body.dataset.sequence === '{sequence}'")


def text_of(page, node_id):
    return page.locator(f'[data-lumora-id="{node_id}"]').first.text_content()


def app_schema(title="Hello", items=("one", "two")):
    return make_schema([
        node("screen", "Scaffold", [
            node("bar", "AppBar", title="Notes"),
            node("title", "Text", text=title),
            node("name", "TextInput", placeholder="Your name"),
            node("list", "FlatList", [node(f"item-{i}", "Text", text=t) for i, t in enumerate(items)]),
        ]),
    ])


# -- the schema code: same vectors, same results as the Python engine ------


def test_js_checksum_reproduces_every_vector(engine):
    """The page's canonical JSON and SHA-256 reproduce every checksum vector (and throw where the reference throws)."""
    results = engine.evaluate("""vectors => vectors.map(v => {
        try {
            const schema = JSON.parse(v.input_json);
            return [LumoraSchema.canonicalJson(schema), LumoraSchema.checksum(schema)];
        } catch (e) { return null; }
    })""", VECTORS)
    for vector, result in zip(VECTORS, results, strict=True):
        if vector["sha256"] is None:
            assert result is None, vector["name"]
        else:
            assert result == [vector["canonical"], vector["sha256"]], vector["name"]


@settings(deadline=None)
@given(edits())
def test_js_apply_delta_agrees_with_the_python_engine(engine, pair):
    """A delta computed by the Python engine, applied by the page's JavaScript, gives the Python result and checksum."""
    old, new = pair
    try:
        delta = S.compute_delta(old, new)
    except S.DeltaNotRepresentable:
        return
    expected = S.apply_delta(old, delta)
    canonical, checksum, unchanged = engine.evaluate("""([oldText, deltaText]) => {
        const old = JSON.parse(oldText);
        const before = LumoraSchema.canonicalJson(old);
        const result = LumoraSchema.applyDelta(old, JSON.parse(deltaText));
        return [LumoraSchema.canonicalJson(result), LumoraSchema.checksum(result),
                LumoraSchema.canonicalJson(old) === before];
    }""", [json.dumps(old, separators=(",", ":")), json.dumps(delta)])
    assert canonical == S.canonical_json(expected)
    assert checksum == S.checksum(expected) == S.checksum(new)
    assert unchanged  # the old state is kept: a failed update must leave it intact


def test_js_apply_delta_refuses_what_does_not_fit(engine):
    """A delta naming an unknown node, parent or index throws instead of changing anything."""
    old = make_schema()
    bad = [
        {"removed": ["nope"], "modified": [], "added": []},
        {"removed": [], "modified": [node("nope")], "added": []},
        {"removed": [], "modified": [], "added": [dict(node("x"), parentId="nope", index=0)]},
        {"removed": [], "modified": [], "added": [dict(node("x"), parentId="root", index=7)]},
    ]
    errors = engine.evaluate("""([old, deltas]) => deltas.map(d => {
        try { LumoraSchema.applyDelta(old, d); return null; } catch (e) { return e.message; }
    })""", [old, bad])
    assert all(errors), errors


# -- the preview as a device ------------------------------------------------


def test_full_push_renders_and_one_leaf_change_patches_in_place(page, daemon):
    """A full push renders; a one-leaf change patches that element in place, no navigation, the focused input keeps its text."""
    sid = daemon.new_session()
    open_preview(page, daemon, sid)
    first = app_schema()
    assert daemon.push(sid, first)["updateType"] == "full"
    wait_sequence(page, 1)
    assert text_of(page, "title") == "Hello"
    assert text_of(page, "bar") == "Notes"
    assert page.locator('[data-lumora-id="list"] > [data-lumora-id]').count() == 2

    field = page.locator('[data-lumora-id="name"] input')
    field.click()
    field.type("Ada")
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.evaluate("""() => {
        window.marker = 'still here';
        window.kept = document.querySelector('[data-lumora-id="name"] input');
        window.titleElement = document.querySelector('[data-lumora-id="title"]');
        window.changedAt = null;
        new MutationObserver(() => {
            if (window.changedAt === null) window.changedAt = performance.now();
        }).observe(window.titleElement, {characterData: true, subtree: true, childList: true});
    }""")
    sent_ms = time.time() * 1000
    result = daemon.push(sid, with_text(first, "Hello, Ada"))
    assert result["updateType"] == "incremental"
    wait_sequence(page, 2)
    assert text_of(page, "title") == "Hello, Ada"
    state = page.evaluate("""() => ({
        marker: window.marker,
        sameInput: window.kept === document.querySelector('[data-lumora-id="name"] input'),
        sameTitle: window.titleElement === document.querySelector('[data-lumora-id="title"]'),
        focused: document.activeElement === window.kept,
        value: window.kept.value,
        stats: window.lumoraPreview.stats,
        inPage: window.changedAt - window.lumoraPreview.stats.receivedAt,
        changedAt: performance.timeOrigin + window.changedAt,
    })""")
    assert state["marker"] == "still here" and not navigations
    assert state["sameInput"] and state["focused"] and state["value"] == "Ada"
    assert state["sameTitle"]
    assert state["stats"]["incremental"] == 1 and state["stats"]["failed"] == 0
    # the text changed within 100 ms of the update frame reaching the page
    assert 0 <= state["inPage"] < 100, state
    print(f"push to DOM: {state['changedAt'] - sent_ms:.0f} ms end to end, {state['inPage']:.1f} ms in the page")


def shown_app(page):
    """What the page shows of the app: its elements, their attributes and
    text, and the state of its inputs."""
    return page.evaluate("""() => {
        const app = document.getElementById('lr-app');
        const describe = e => ({tag: e.tagName, attributes: [...e.attributes].map(a => [a.name, a.value]),
            type: e.type, value: e.value, checked: e.checked, text: e.children.length ? null : e.textContent,
            children: [...e.children].map(describe)});
        return describe(app);
    }""")


def test_a_patched_page_shows_what_a_fresh_page_shows(page, chromium, daemon):
    """What a push takes away goes from the page too: a list's `data` items
    (the props gone, or child nodes shown instead), a password field's
    masking, a multi-line field's second line, a field's value."""
    sid = daemon.new_session()
    steps = [
        [node("list", "FlatList", data=["one", "two"]),
         node("secret", "TextInput", secureTextEntry=True, placeholder="Password"),
         node("note", "TextInput", multiline=True, value="first")],
        [node("list", "FlatList"), node("secret", "TextInput", placeholder="Password"), node("note", "TextInput")],
        [node("list", "FlatList", data=["one", "two"]), node("secret", "TextInput", placeholder="Password"),
         node("note", "TextInput", value="second")],
        [node("list", "FlatList", [node("item", text="a child")], data=["one", "two"]),
         node("secret", "TextInput", placeholder="Password"), node("note", "TextInput")],
    ]
    fresh = chromium.new_page()
    fresh.set_default_timeout(WAIT)
    try:
        for sequence, nodes in enumerate(steps, 1):
            daemon.push(sid, make_schema([node("screen", "View", nodes)]))
            if sequence == 1:
                open_preview(page, daemon, sid, sequence=1)
                assert page.locator('[data-lumora-id="list"] li').count() == 2
            wait_sequence(page, sequence)
            open_preview(fresh, daemon, sid, sequence=sequence)
            assert shown_app(page) == shown_app(fresh), f"after push #{sequence}"
    finally:
        fresh.close()


def test_sample_app_renders_every_family_and_is_photographed(page, daemon, tmp_path):
    """The sample app renders each node family (unknown types as labelled boxes) from local files only; a screenshot is written."""
    sid = daemon.new_session()
    daemon.push(sid, SAMPLE)
    fetched = []
    page.on("request", lambda r: fetched.append(r.url))
    open_preview(page, daemon, sid, sequence=1)
    # everything the page loads comes from the daemon (the sample's image is a data: URL)
    assert all(url.startswith((daemon.url + "/", "data:")) for url in fetched), fetched
    assert {url.rsplit("/", 1)[-1] for url in fetched if "/assets/" in url} >= {
        "schema.js", "render.js", "preview.js", "preview.css"}
    families = page.evaluate("""() => [...document.querySelectorAll('[data-lumora-id]')]
        .map(e => [e.dataset.lumoraId, [...e.classList].find(c => /^lr-(?!node|type)/.test(c))])""")
    shown = dict(families)
    assert shown["screen"] == "lr-scaffold" and shown["appbar"] == "lr-bar" and shown["body"] == "lr-layout"
    assert shown["title"] == "lr-text" and shown["save"] == "lr-button" and shown["name"] == "lr-input"
    assert shown["notify"] == "lr-toggle" and shown["list"] == "lr-list" and shown["logo"] == "lr-image"
    assert shown["star"] == "lr-icon" and shown["card"] == "lr-card" and shown["map"] == "lr-unknown"
    assert page.locator('[data-lumora-id="notify"] input').is_checked()
    assert page.locator('[data-lumora-id="list"] li').all_text_contents() == ["Buy milk", "Ship the preview", "Call Ada"]
    unknown = page.locator('[data-lumora-id="map"]')
    assert unknown.locator(".lr-unknown-type").text_content() == "MapView"
    assert '"latitude": 52.52' in unknown.locator(".lr-unknown-props").text_content()
    shot = tmp_path / "sample-app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_page_resumes_after_the_daemon_is_killed_and_restarted(page, tmp_path):
    """SIGKILL the daemon, start it again on the same port and data dir: the page reconnects, resumes and shows the next push."""
    first = browser.Twistd(tmp_path / "data").start()
    try:
        sid = first.new_session()
        schema = app_schema()
        first.push(sid, schema)
        connects = []
        page.on("websocket", lambda ws: ws.on(
            "framesent", lambda frame: connects.append(json.loads(frame)) if '"connect"' in frame else None))
        open_preview(page, first, sid, sequence=1)
        first.push(sid, with_text(schema, "Before the crash"))
        wait_sequence(page, 2)
        first.kill()
        page.wait_for_function("() => document.body.dataset.status === 'connecting'")
    finally:
        first.stop()
    second = browser.Twistd(tmp_path / "data", first.port).start()
    try:
        page.wait_for_function("() => window.lumoraPreview.stats.connections === 2")
        assert page.evaluate("document.body.dataset.resumed") == "true"  # nothing missed: no full schema sent
        # the second connect named the state the page holds
        assert [c["payload"].get("lastSequence") for c in connects] == [None, 2]
        assert connects[1]["payload"]["lastChecksum"] == S.checksum(with_text(schema, "Before the crash"))
        assert connects[1]["payload"]["platform"] == "web"
        second.push(sid, with_text(schema, "After the restart"))
        wait_sequence(page, 3)
        assert text_of(page, "title") == "After the restart"
        stats = page.evaluate("window.lumoraPreview.stats")
        assert stats["full"] == 1 and stats["incremental"] == 2 and stats["failed"] == 0
    finally:
        second.stop()


def test_checksum_mismatch_shows_an_overlay_and_the_full_schema_repairs_it(page, daemon):
    """An update whose checksum does not match is refused, shown, acked as failed; the full update that follows clears it."""
    sid = daemon.new_session()
    schema = app_schema()
    daemon.push(sid, schema)
    open_preview(page, daemon, sid, sequence=1)
    wrong = copy.deepcopy(schema)
    wrong["nodes"][0]["children"][1]["props"]["text"] = "Not what the daemon holds"
    # what the page shows right after taking the update (the repair follows at once)
    seen = page.evaluate("""schema => {
        window.lumoraPreview.handle({type: 'update', payload: {
            type: 'full', schema: schema, sequenceNumber: 1, checksum: '0'.repeat(64), preserveState: true}});
        const overlay = document.getElementById('lr-overlay');
        return {kind: overlay.dataset.kind, text: overlay.textContent, hidden: overlay.hidden,
                title: document.querySelector('[data-lumora-id="title"]').textContent};
    }""", wrong)
    assert seen["kind"] == "checksum" and not seen["hidden"] and "Checksum mismatch" in seen["text"], seen
    assert seen["title"] == "Hello"  # the bad schema was not shown
    overlay = page.locator("#lr-overlay")
    # the failed ack brings the full schema again, which checks out
    page.wait_for_function("() => window.lumoraPreview.stats.full === 2")
    assert overlay.is_hidden()
    assert text_of(page, "title") == "Hello"
    assert page.evaluate("window.lumoraPreview.stats.failed") == 1


def test_error_message_shows_an_overlay(page, daemon):
    """An `error` from the daemon (a reload before any push) is shown in the overlay."""
    sid = daemon.new_session()
    open_preview(page, daemon, sid)
    page.evaluate("window.lumoraPreview.send('reload', {reason: 'test'})")
    overlay = page.locator("#lr-overlay")
    overlay.wait_for(state="visible")
    assert overlay.get_attribute("data-kind") == "error"
    assert "UPDATE_FAILED" in overlay.text_content()


def test_unknown_session_is_shown_and_not_retried(page, daemon):
    """A preview of a session that does not exist says so (close 4404) and stops."""
    page.goto(f"{daemon.url}/preview/{'0' * 32}")
    page.wait_for_function("() => document.body.dataset.status === 'closed'")
    assert "4404" in page.locator("#lr-overlay").text_content()


def test_page_joins_as_a_web_device_and_its_console_errors_become_log_lines(page, daemon):
    """The page connects with platform "web" and its console errors arrive as device log lines."""
    sid = daemon.new_session()
    daemon.push(sid, app_schema())
    open_preview(page, daemon, sid, sequence=1)
    status, info = daemon.call("GET", f"/session/{sid}")
    assert status == 200 and [d["platform"] for d in info["devices"]] == ["web"]
    device_id = page.evaluate("window.lumoraPreview.deviceId")
    assert info["devices"][0]["deviceId"] == device_id
    page.evaluate("console.error('render failed: boom 42')")
    page.evaluate("setTimeout(() => { throw new Error('uncaught 43'); }, 0)")
    deadline = time.monotonic() + WAIT / 1000
    while True:
        lines = daemon.call("GET", f"/session/{sid}/logs")[1]["lines"]
        found = {line["message"] for line in lines if line["level"] == "error" and line["deviceId"] == device_id}
        if any("boom 42" in m for m in found) and any("uncaught 43" in m for m in found):
            break
        assert time.monotonic() < deadline, lines
        page.wait_for_timeout(50)
    _, health = daemon.call("GET", f"/session/{sid}/health")
    assert health["devices"][0]["ackLag"] == 0  # every update acked


# -- the dashboard -------------------------------------------------------------


def test_dashboard_lists_sessions_and_devices_and_reloads(page, chromium, daemon):
    """The dashboard shows a session with its QR code and its preview device; its button reloads the devices."""
    sid = daemon.new_session()
    daemon.push(sid, app_schema())
    preview = chromium.new_page()
    try:
        open_preview(preview, daemon, sid, sequence=1)
        page.goto(daemon.url + "/")
        card = page.locator(f'section.session[data-session="{sid}"]')
        card.locator("tr[data-device]").first.wait_for()
        row = card.locator("tr[data-device]")
        assert row.count() == 1 and "web" in row.text_content() and "healthy" in row.text_content()
        assert card.locator(".qr svg").count() == 1
        assert f"session={sid}" in card.locator(".qr .url").text_content()
        assert card.locator(".updates li").first.text_content().startswith("#1 full")
        assert card.locator("a.open").get_attribute("href") == f"preview/{sid}"
        card.locator("button.reload").click()
        card.locator(".message").filter(has_text="reloaded 1 device(s) at #1").wait_for()
        preview.wait_for_function("() => window.lumoraPreview.stats.full === 2")
        # the preview's log lines show up live
        preview.evaluate("console.warn('look at me')")
        card.locator(".logs .level-warn").filter(has_text="look at me").wait_for()
    finally:
        preview.close()


def test_dashboard_sends_the_token_of_its_url_as_a_header(page, daemon):
    """Opened as /?token=T, the dashboard drops the token from the address bar and sends it as a Bearer header."""
    calls = []
    page.on("request", lambda r: calls.append((r.url, r.headers.get("authorization"))) if "/overview" in r.url else None)
    page.goto(daemon.url + "/?token=s3cret")
    page.wait_for_function("() => document.body.dataset.state === 'ok'")
    assert page.evaluate("location.search") == ""
    page.reload()  # kept for the tab
    page.wait_for_function("() => document.body.dataset.state === 'ok'")
    assert len(calls) >= 2 and all(auth == "Bearer s3cret" for _, auth in calls), calls
    assert all("token" not in url for url, _ in calls)
