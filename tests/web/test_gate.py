"""The gate reads the user name of a login however the form was encoded: the login page posts multipart form
data, so a gate that read only urlencoded bodies counted every browser login under one empty name (five wrong
passwords from anyone locked the login page for everybody)."""
from __future__ import annotations

import asyncio

from urllib3 import encode_multipart_formdata

from assistant.web.gate import login_name


def scope_for(content_type: str) -> dict:
    return {"type": "http", "method": "POST", "path": "/login", "headers": [(b"content-type", content_type.encode())]}


def test_the_login_pages_multipart_form_names_its_user():
    body, content_type = encode_multipart_formdata({"username": "carl-phone", "password": "nope"})
    assert asyncio.run(login_name(scope_for(content_type), body)) == "carl-phone"


def test_an_urlencoded_form_names_its_user():
    assert asyncio.run(login_name(scope_for("application/x-www-form-urlencoded"), b"username=ada&password=x")) == "ada"


def test_a_malformed_or_nameless_form_names_nobody():
    assert asyncio.run(login_name(scope_for("multipart/form-data; boundary=zz"), b"--zz\r\nnot a part")) == ""
    body, content_type = encode_multipart_formdata({"password": "nope"})
    assert asyncio.run(login_name(scope_for(content_type), body)) == ""
