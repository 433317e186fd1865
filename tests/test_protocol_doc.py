"""docs/protocol.md is normative: its tables must name exactly the message
types, payload fields, error codes and close codes the code uses."""

import os
import re

from lumora_reload import errors, messages

DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "protocol.md")


def section(title):
    text = open(DOC, encoding="utf-8").read()
    start = text.index(title)
    end = text.find("\n### ", start + 1)
    end2 = text.find("\n## ", start + 1)
    ends = [e for e in (end, end2) if e != -1]
    return text[start:min(ends) if ends else len(text)]


def rows(text):
    """The first cell and the rest of each table row (header and rule skipped)."""
    found = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        found.append(cells)
    return found[1:]


def test_every_device_message_type_and_field_is_documented():
    table = {re.sub(r"`", "", r[0]): r[1] for r in rows(section("### 2.1 Device → server"))}
    assert set(table) == set(messages._PAYLOAD_FIELDS)
    for kind, fields in messages._PAYLOAD_FIELDS.items():
        documented = set(re.findall(r"`(\w+)`", table[kind]))
        assert {name for name, _, _ in fields} <= documented, kind


def test_every_error_code_is_documented():
    documented = {r[0].strip("`") for r in rows(section("### 2.3 Error codes"))}
    assert documented == set(errors.PROTOCOL_CODES)
    text = section("### 2.3 Error codes")
    for code in (errors.BAD_REQUEST, errors.FORBIDDEN, errors.NOT_FOUND, errors.PAYLOAD_TOO_LARGE):
        assert f"`{code}`" in text


def test_every_close_code_is_documented():
    documented = {int(r[0]) for r in rows(section("### 2.4 Close codes"))}
    constants = {v for k, v in vars(messages).items() if k.startswith("CLOSE_")}
    assert constants <= documented
    assert documented <= constants


def test_the_documented_depth_limit_is_the_code_s():
    from lumora_reload import schema

    assert f"at most **{schema.MAX_DEPTH}** levels" in section("### 4.1 What a schema may hold")
