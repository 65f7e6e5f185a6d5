#!/usr/bin/env python3
"""Signed deliveries for flowgate's tests, one set per scheme of catalogue.json, signed by
sign.py (so by the provider's own library where it has one).

    vectors.py                 the unit tests' vectors (filter/src/verify/vectors.json), signed
                               at a fixed time
    vectors.py --now <unix s>  the same signed at that time, for the end-to-end tests

Per scheme: the flow's `verify`, and deliveries signed with the older key (`old`), the newer
key (`new`) and a key the flow does not have (`wrong`); then the providers' handshakes with
the answer each provider expects.
"""

import base64
import hashlib
import hmac
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import sign  # noqa: E402

SIGNED_AT = 1700000000
AUTHORITY = "hooks.example.com"
ASYMMETRIC = {"discord", "sendgrid"}


def configured(entry, key):
    """A key as flowgate's configuration holds it (public keys for signing keys)."""
    scheme = entry["scheme"]
    if scheme in ASYMMETRIC or (scheme == "standard-webhooks" and not key.startswith("whsec_")):
        return sign.public(scheme, key)
    return key


def verify_config(entry):
    verify = {"scheme": entry["scheme"], "secrets": [configured(entry, k) for k in entry["keys"]]}
    verify.update(entry.get("verify", {}))
    return verify


def delivery(scheme, key, body, content_type, at, method="POST", extra=None, path=None):
    """A request (pseudo-headers first, names lower-case) signed with `key` at `at`."""
    path = path or f"/v1/flow-webhook/s-{scheme}"
    job = {"scheme": scheme, "key": key, "body": body, "url": f"https://{AUTHORITY}{path}",
           "timestamp": at, "content_type": content_type, "method": method}
    job.update(extra or {})
    signed = sign.sign(job)
    headers = [
        [":method", method],
        [":path", signed["url"][len(f"https://{AUTHORITY}"):]],
        [":authority", AUTHORITY],
        ["x-forwarded-proto", "https"],
        ["content-type", content_type],
    ] + [[name.lower(), value] for name, value in signed["headers"]]
    return {"headers": headers, "body": signed["body"]}


def plain(scheme, method, path, headers=(), body=""):
    """An unsigned request."""
    return {"headers": [[":method", method], [":path", path], [":authority", AUTHORITY]] + [list(h) for h in headers],
            "body": body}


def text(body):
    return {"status": 200, "content_type": "text/plain; charset=utf-8", "body": body}


def as_json(value):
    return {"status": 200, "content_type": "application/json", "json": value}


def handshakes(by_scheme, at):
    """Each provider's handshake, signed where the provider signs it, and its expected answer."""
    out = []
    new = {scheme: entry["keys"][1] for scheme, entry in by_scheme.items()}
    slack = json.dumps({"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"})
    out.append(("slack", delivery("slack", new["slack"], slack, "application/json", at),
                as_json({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})))
    plain_token = "qgg8vlvZRS6UYooatFL8Aw"
    zoom = json.dumps({"payload": {"plainToken": plain_token}, "event_ts": 1654503849680, "event": "endpoint.url_validation"})
    encrypted = hmac.new(new["zoom"].encode(), plain_token.encode(), hashlib.sha256).hexdigest()
    out.append(("zoom", delivery("zoom", new["zoom"], zoom, "application/json", at),
                as_json({"plainToken": plain_token, "encryptedToken": encrypted})))
    twitch = json.dumps({"challenge": "pogchamp-kappa-360noscope-vohiyo", "subscription": {"type": "channel.follow", "status": "webhook_callback_verification_pending"}})
    out.append(("twitch", delivery("twitch", new["twitch"], twitch, "application/json", at,
                                   extra={"message_type": "webhook_callback_verification"}),
                text("pogchamp-kappa-360noscope-vohiyo")))
    out.append(("discord", delivery("discord", new["discord"], json.dumps({"type": 1}), "application/json", at),
                as_json({"type": 1})))
    token = "Validation: Testing client application reachability for subscription Request-Id: 25b1a5ff"
    out.append(("msgraph", plain("msgraph", "POST", "/v1/flow-webhook/s-msgraph?validationToken=" +
                                 token.replace(" ", "+").replace(":", "%3A"), [("content-type", "text/plain")]),
                text(token)))
    out.append(("dropbox", plain("dropbox", "GET", "/v1/flow-webhook/s-dropbox?challenge=x7Yh3kLpQ2"), text("x7Yh3kLpQ2")))
    verify_token = by_scheme["meta"]["verify"]["verify_token"]
    out.append(("meta", plain("meta", "GET", f"/v1/flow-webhook/s-meta?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={verify_token}"),
                text("1158201444")))
    out.append(("okta", plain("okta", "GET", "/v1/flow-webhook/s-okta",
                              [("x-okta-verification-challenge", "We_kkL4hPmMDB3ZCqN4yLjZTwyqXG4uB"), ("authorization", new["okta"])]),
                as_json({"verification": "We_kkL4hPmMDB3ZCqN4yLjZTwyqXG4uB"})))
    return [{"scheme": scheme, "request": request, "answer": answer} for scheme, request, answer in out]


def main():
    at = SIGNED_AT
    if len(sys.argv) == 3 and sys.argv[1] == "--now":
        at = int(sys.argv[2])
    catalogue = json.load(open(os.path.join(os.path.dirname(__file__), "catalogue.json")))
    by_scheme = {entry["scheme"]: entry for entry in catalogue["schemes"]}
    schemes = []
    for entry in catalogue["schemes"]:
        scheme, body, content_type = entry["scheme"], entry["body"], entry["content_type"]
        schemes.append({
            "scheme": scheme,
            "verify": verify_config(entry),
            "wrong_secret": configured(entry, entry["wrong"]),
            "old": delivery(scheme, entry["keys"][0], body, content_type, at),
            "new": delivery(scheme, entry["keys"][1], body, content_type, at),
            "wrong": delivery(scheme, entry["wrong"], body, content_type, at),
        })
    out = {"_about": "generated by tests/signers/vectors.py: do not edit", "signed_at": at,
           "schemes": schemes, "handshakes": handshakes(by_scheme, at)}
    # One scheme per line: diffs stay readable.
    sys.stdout.write('{"_about": %s, "signed_at": %d,\n "schemes": [\n' % (json.dumps(out["_about"]), at))
    sys.stdout.write(",\n".join("  " + json.dumps(s) for s in schemes))
    sys.stdout.write('\n ],\n "handshakes": [\n')
    sys.stdout.write(",\n".join("  " + json.dumps(h) for h in out["handshakes"]))
    sys.stdout.write("\n ]\n}\n")


if __name__ == "__main__":
    main()
