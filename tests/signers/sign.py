#!/usr/bin/env python3
"""Signs webhook deliveries the way each provider does, for flowgate's tests.

Reads a JSON list of jobs on stdin, writes a JSON list of results on stdout. A job:
  {"scheme": "stripe", "key": "<signing key>", "body": "<text>", "url": "<public URL>",
   "timestamp": <unix seconds>, "id": "<message id>", "content_type": "<type>"}
A result: {"headers": [[name, value], ...], "url": "<URL to send to>"}.

Where the provider's own library signs, it signs here (standardwebhooks, svix, slack_sdk,
twilio, stripe, hubspot-api-client). Where a provider ships only a verifier (Square,
SendGrid, Discord's documented PyNaCl check), the delivery is signed as its docs say and then
checked with that verifier before it is returned; the rest are signed as their docs say.
`python3 sign.py public <scheme> <key>` prints the public key of a private signing key.
"""

import base64
import hashlib
import hmac
import json
import sys
from datetime import datetime, timezone
from urllib.parse import parse_qsl, urlsplit


def hmac_hex(key, message, digest=hashlib.sha256):
    return hmac.new(key, message, digest).hexdigest()


def hmac_b64(key, message, digest=hashlib.sha256):
    return base64.b64encode(hmac.new(key, message, digest).digest()).decode()


def rfc3339(ts):
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")


def ed25519_signing_key(seed_hex):
    from nacl.signing import SigningKey

    return SigningKey(bytes.fromhex(seed_hex))


def p256_signing_key(scalar_hex):
    from ecdsa import NIST256p, SigningKey

    return SigningKey.from_secret_exponent(int(scalar_hex, 16), curve=NIST256p, hashfunc=hashlib.sha256)


def public(scheme, key):
    """The public key a provider shows for a private signing key, as flowgate reads it."""
    if scheme == "discord":
        return ed25519_signing_key(key).verify_key.encode().hex()
    if scheme in ("standard-webhooks", "svix"):
        return "whpk_" + base64.b64encode(ed25519_signing_key(key).verify_key.encode()).decode()
    if scheme == "sendgrid":
        return base64.b64encode(p256_signing_key(key).get_verifying_key().to_der()).decode()
    raise SystemExit(f"no public key for {scheme}")


def sign(job):
    scheme, key = job["scheme"], job["key"]
    ts = job.get("timestamp", 0)
    # Bodies that carry their own proof: Linear's webhookTimestamp, Graph's clientState.
    text = job["body"].replace("@MS@", str(ts * 1000)).replace("@KEY@", key)
    body = text.encode()
    url = job.get("url", "")
    msg_id = job.get("id", "msg_2bM0pQfLdKjN8s7XwYvQe")
    secret = key.encode()
    h = []
    if scheme == "github" or scheme == "meta":
        h.append(("X-Hub-Signature-256", "sha256=" + hmac_hex(secret, body)))
    elif scheme == "stripe":
        import stripe

        signature = stripe.WebhookSignature._compute_signature(f"{ts}.{text}", key)
        header = f"t={ts},v1={signature}"
        stripe.WebhookSignature.verify_header(text, header, key, tolerance=None)
        h.append(("Stripe-Signature", header))
    elif scheme == "shopify":
        h.append(("X-Shopify-Hmac-Sha256", hmac_b64(secret, body)))
    elif scheme == "slack":
        from slack_sdk.signature import SignatureVerifier

        signature = SignatureVerifier(key).generate_signature(timestamp=str(ts), body=text)
        h += [("X-Slack-Request-Timestamp", str(ts)), ("X-Slack-Signature", signature)]
    elif scheme in ("standard-webhooks", "svix"):
        prefix = "webhook" if scheme == "standard-webhooks" else "svix"
        when = datetime.fromtimestamp(ts, tz=timezone.utc)
        if key.startswith("whsec_"):
            if scheme == "svix":
                from svix.webhooks import Webhook
            else:
                from standardwebhooks.webhooks import Webhook
            signature = Webhook(key).sign(msg_id, when, text)
        else:
            # v1a (ed25519) as the Standard Webhooks spec defines it; the libraries sign only v1.
            signed = f"{msg_id}.{ts}.{text}".encode()
            signature = "v1a," + base64.b64encode(ed25519_signing_key(key).sign(signed).signature).decode()
        h += [(f"{prefix}-id", msg_id), (f"{prefix}-timestamp", str(ts)), (f"{prefix}-signature", signature)]
    elif scheme == "zoom":
        h += [
            ("x-zm-request-timestamp", str(ts)),
            ("x-zm-signature", "v0=" + hmac_hex(secret, f"v0:{ts}:{text}".encode())),
        ]
    elif scheme == "twilio":
        from twilio.request_validator import RequestValidator

        validator = RequestValidator(key)
        if job.get("content_type", "").startswith("application/x-www-form-urlencoded"):
            params = dict(parse_qsl(text, keep_blank_values=True))
            signature = validator.compute_signature(url, params)
            assert validator.validate(url, params, signature)
        else:
            joiner = "&" if urlsplit(url).query else "?"
            url = f"{url}{joiner}bodySHA256={validator.compute_hash(text)}"
            signature = validator.compute_signature(url, {})
            assert validator.validate(url, text, signature)
        h.append(("X-Twilio-Signature", signature))
    elif scheme == "linear":
        h.append(("Linear-Signature", hmac_hex(secret, body)))
    elif scheme == "pagerduty":
        h.append(("X-PagerDuty-Signature", "v1=" + hmac_hex(secret, body)))
    elif scheme == "hubspot":
        from hubspot.utils.signature import Signature

        millis = str(ts * 1000)
        method = job.get("method", "POST")
        signature = Signature.get_signature(
            client_secret=key,
            request_body=text,
            signature_version="v3",
            http_uri=url,
            http_method=method,
            timestamp=millis,
        )
        h += [("X-HubSpot-Signature-v3", signature), ("X-HubSpot-Request-Timestamp", millis)]
    elif scheme == "square":
        signature = hmac_b64(secret, (url + text).encode())
        from square.utils.webhooks_helper import verify_signature

        assert verify_signature(
            request_body=text, signature_header=signature, signature_key=key, notification_url=url
        )
        h.append(("x-square-hmacsha256-signature", signature))
    elif scheme == "intercom":
        h.append(("X-Hub-Signature", "sha1=" + hmac_hex(secret, body, hashlib.sha1)))
    elif scheme == "gitlab":
        h.append(("X-Gitlab-Token", key))
    elif scheme == "discord":
        from nacl.signing import VerifyKey

        signing = ed25519_signing_key(key)
        signature = signing.sign(str(ts).encode() + body).signature.hex()
        # Discord's documented check (PyNaCl).
        VerifyKey(bytes.fromhex(public("discord", key))).verify(
            f"{ts}{text}".encode(), bytes.fromhex(signature)
        )
        h += [("X-Signature-Ed25519", signature), ("X-Signature-Timestamp", str(ts))]
    elif scheme == "sendgrid":
        from ecdsa.util import sigencode_der
        from sendgrid.helpers.eventwebhook import EventWebhook

        signing = p256_signing_key(key)
        signed = str(ts).encode() + body
        signature = base64.b64encode(signing.sign_deterministic(signed, sigencode=sigencode_der)).decode()
        webhook = EventWebhook()
        assert webhook.verify_signature(
            text, signature, str(ts), webhook.convert_public_key_to_ecdsa(public("sendgrid", key))
        )
        h += [
            ("X-Twilio-Email-Event-Webhook-Signature", signature),
            ("X-Twilio-Email-Event-Webhook-Timestamp", str(ts)),
        ]
    elif scheme == "twitch":
        stamp = rfc3339(ts)
        h += [
            ("Twitch-Eventsub-Message-Id", msg_id),
            ("Twitch-Eventsub-Message-Timestamp", stamp),
            ("Twitch-Eventsub-Message-Type", job.get("message_type", "notification")),
            ("Twitch-Eventsub-Message-Signature", "sha256=" + hmac_hex(secret, (msg_id + stamp + text).encode())),
        ]
    elif scheme == "typeform":
        h.append(("Typeform-Signature", "sha256=" + hmac_b64(secret, body)))
    elif scheme == "dropbox":
        h.append(("X-Dropbox-Signature", hmac_hex(secret, body)))
    elif scheme == "calendly":
        h.append(("Calendly-Webhook-Signature", f"t={ts},v1=" + hmac_hex(secret, f"{ts}.{text}".encode())))
    elif scheme == "msteams":
        h.append(("Authorization", "HMAC " + hmac_b64(base64.b64decode(key), body)))
    elif scheme == "okta":
        h.append(("Authorization", key))
    elif scheme == "msgraph":
        pass  # the clientState is in the body
    elif scheme == "hmac":
        # flowgate's generic example: HMAC-SHA512 hex of "<timestamp>.<body>".
        h += [("X-Timestamp", str(ts)), ("X-Signature", "sha512=" + hmac_hex(secret, f"{ts}.{text}".encode(), hashlib.sha512))]
    else:
        raise SystemExit(f"unknown scheme {scheme}")
    return {"headers": h, "url": url, "body": text}


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "public":
        print(public(sys.argv[2], sys.argv[3]))
        return
    jobs = json.load(sys.stdin)
    json.dump([sign(job) for job in jobs], sys.stdout)


if __name__ == "__main__":
    main()
