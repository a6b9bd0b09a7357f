"""The signature scheme receivers check."""
from __future__ import annotations

import hashlib
import hmac

from assistant.notify.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signed_headers, verify

BODY = b'{"event":"ended","job_id":"x"}'


def test_the_signature_is_the_hmac_of_timestamp_period_body():
    headers = signed_headers("key", BODY, now=1_700_000_000)
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    expected = hmac.new(b"key", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert SIGNATURE_HEADER not in signed_headers(None, BODY)


def test_verify_takes_ours_and_refuses_tampering_other_keys_and_old_timestamps():
    headers = signed_headers("key", BODY, now=1_700_000_000)
    ts, sig = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
    assert verify("key", BODY, ts, sig, now=1_700_000_010)
    assert not verify("key", BODY + b" ", ts, sig, now=1_700_000_010)
    assert not verify("other", BODY, ts, sig, now=1_700_000_010)
    assert not verify("key", BODY, "1700000001", sig, now=1_700_000_010)  # the timestamp is signed too
    assert not verify("key", BODY, ts, sig, now=1_700_000_000 + 301)
    assert not verify("key", BODY, None, sig) and not verify("key", BODY, ts, None)
