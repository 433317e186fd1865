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
        page.wait_for_function("document.body.dataset.status === 'live'")


def wait_sequence(page, sequence):
    page.wait_for_function(f"document.body.dataset.sequence === '{sequence}'")


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


@settings(max_examples=150, deadline=None)
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
