"""The signature debugger: given what a receiver got, say per signature header whether it
verifies and, when it does not, which of the common receiver mistakes explains it.

The service knows the bytes it sent and signed for each attempt (the attempt's logged request),
so a body that does not verify can be compared with the one that was sent, and a signature the
receiver's code computed can be reproduced by making each known mistake on purpose.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from webhooks import credentials
from webhooks.models import Attempt, Delivery, Session, Webhook
from webhooks.signing import SECRET_PREFIX, standard_key

# Standard Webhooks libraries refuse a `webhook-timestamp` further than this from now.
TOLERANCE_SECONDS = 5 * 60

HEADER_MISSING = "header_missing"
UNKNOWN_DELIVERY = "unknown_delivery"
BODY_MODIFIED = "body_modified"
WRONG_SECRET = "wrong_secret"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
SECRET_FORMAT = "secret_format"
SIGNED_BODY_ONLY = "signed_body_only"

CLOUDTHINKER = "X-CloudThinker-Signature"
STANDARD = "webhook-signature"
DELIVERY_HEADER = "X-CloudThinker-Delivery"


@dataclass
class Sent:
    """What the service sent in one attempt: its exact body and headers."""

    body: str
    headers: dict[str, str]


@dataclass
class Secret:
    """One of the webhook's secrets; `expires_at` None or in the future means it signs now."""

    value: str
    expires_at: datetime | None = None


@dataclass
class Check:
    header: str
    valid: bool
    reason: str
    signed: str | None = None  # the exact string the service signed for this header


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return bool(self.checks) and all(c.valid for c in self.checks) and not self.problems

    def problem(self, code: str) -> None:
        if code not in self.problems:
            self.problems.append(code)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, whatever its case."""
    wanted = name.lower()
    return next((str(v) for k, v in headers.items() if k.lower() == wanted), None)


def parse_header_lines(text: str) -> dict[str, str]:
    """Headers pasted as `Name: value` lines (as a log or a proxy prints them)."""
    headers: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() and " " not in name.strip():
            headers[name.strip()] = value.strip()
    return headers


def signed_content(msg_id: str, timestamp: str, body: str) -> str:
    """What Standard Webhooks signs: `{webhook-id}.{webhook-timestamp}.{body}`."""
    return f"{msg_id}.{timestamp}.{body}"


def _mac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def cloudthinker_matches(value: str, body: str, secret: str) -> bool:
    expected = "sha256=" + _mac(secret.encode(), body).hex()
    return hmac.compare_digest(expected.encode(), value.strip().encode())


def standard_matches(value: str, content: str, secret: str) -> bool:
    """Any of the space-separated `v1,<base64>` signatures is this secret's over `content`."""
    expected = base64.b64encode(_mac(standard_key(secret), content)).decode()
    for part in value.split():
        version, _, sig = part.partition(",")
        if version == "v1" and hmac.compare_digest(sig.encode(), expected.encode()):
            return True
    return False


# -- the body ----------------------------------------------------------------------------------


def _key_orders(value: Any) -> list[list[str]]:
    """Every object's keys in document order, depth first."""
    if isinstance(value, dict):
        found = [list(value)]
        for item in value.values():
            found += _key_orders(item)
        return found
    if isinstance(value, list):
        return [order for item in value for order in _key_orders(item)]
    return []


def body_difference(received: str, sent: str) -> str | None:
    """How `received` differs from the body that was sent, or None when it is byte for byte."""
    if received == sent:
        return None
    try:
        got, original = json.loads(received), json.loads(sent)
    except ValueError:
        got = original = None
    if got is not None and got == original:
        if _key_orders(got) != _key_orders(original):
            return (
                "key order: the same JSON with its keys in another order (the body was parsed "
                "and serialised again, e.g. with sort_keys); verify the raw body as received"
            )
        if received.isascii() and not sent.isascii():
            return (
                "encoding: the same JSON with non-ASCII characters escaped as \\uXXXX (the body "
                "was re-serialised with ensure_ascii); verify the raw body as received"
            )
        if received.strip() == sent.strip():
            return (
                "whitespace: the body differs only in whitespace before or after it (a newline "
                "added or stripped); verify the raw body as received"
            )
        return (
            "re-serialised JSON: the same data but formatted differently (spaces after ':' "
            "and ',', indentation); the framework parsed the body and serialised it again "
            "before verifying; verify the raw body as received"
        )
    if received.strip() == sent.strip():
        return "whitespace: the body differs only in whitespace before or after it"
    try:
        if received.encode("latin-1").decode("utf-8") == sent:
            return "encoding: the body's UTF-8 bytes were decoded as Latin-1; decode as UTF-8"
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    at = next(
        (i for i, (a, b) in enumerate(zip(received, sent, strict=False)) if a != b),
        min(len(received), len(sent)),
    )
    return (
        f"the content differs from what was sent, first at character {at} "
        f"(got {received[at : at + 20]!r}, sent {sent[at : at + 20]!r})"
    )


# -- the checks --------------------------------------------------------------------------------


def verify(
    *,
    body: str,
    headers: Mapping[str, str],
    secrets: list[Secret],
    sent: Sent | None,
    delivery_known: bool,
    now: datetime,
    secret: str | None = None,
    computed: str | None = None,
) -> Report:
    """Check a received request against the webhook's `secrets` and what was `sent`.

    `delivery_known` is False when `X-CloudThinker-Delivery` names no delivery of this webhook;
    `secret` is the one the receiver uses (default: each of the webhook's valid ones).
    """
    report = Report()
    valid_now = [s.value for s in secrets if s.expires_at is None or s.expires_at > now]
    keys = _given_secret(report, secret, secrets, valid_now, now)
    difference = _check_delivery(report, headers, body, sent, delivery_known)
    present = [h for h in (CLOUDTHINKER, STANDARD) if header(headers, h) is not None]
    if not present:
        report.problem(HEADER_MISSING)
        report.checks.append(
            Check(
                STANDARD,
                False,
                f"no signature header: neither {CLOUDTHINKER} nor {STANDARD} is among the "
                "headers given (a proxy may strip them, or the webhook has no secret)",
            )
        )
    for name in present:
        value = header(headers, name) or ""
        if name == CLOUDTHINKER:
            check = _check_cloudthinker(value, body, keys, sent)
        else:
            check = _check_standard(report, value, headers, body, keys, sent, now)
        if not check.valid and difference is not None:
            check.reason += f"; the body was modified ({difference})"
        report.checks.append(check)
    if computed:
        _explain_computed(report, computed.strip(), body, headers, keys, secrets, sent)
    return report


def _given_secret(
    report: Report, secret: str | None, secrets: list[Secret], valid_now: list[str], now: datetime
) -> list[str]:
    """The secrets to check with: the receiver's when given (noting a wrong one), else ours."""
    if not secret:
        return valid_now
    secret = secret.strip()
    if secret in valid_now:
        return [secret]
    report.problem(WRONG_SECRET)
    expired = next((s for s in secrets if s.value == secret), None)
    if expired is not None and expired.expires_at is not None:
        why = (
            f"the secret given is an earlier secret of this webhook: it stopped signing at "
            f"{expired.expires_at:%Y-%m-%d %H:%M:%S} UTC after a rotation; use the current one"
        )
    elif any(SECRET_PREFIX + secret == s for s in valid_now):
        why = (
            "the secret given is the current one without its whsec_ prefix; keep the whole "
            "secret (X-CloudThinker-Signature's key is all of it, whsec_ included)"
        )
    else:
        why = "the secret given is none of this webhook's valid secrets (it was changed?)"
    report.checks.append(Check("secret", False, why))
    return [secret]


def _check_delivery(
    report: Report, headers: Mapping[str, str], body: str, sent: Sent | None, known: bool
) -> str | None:
    """Find what was sent by `X-CloudThinker-Delivery`; returns how the body differs."""
    delivery_id = header(headers, DELIVERY_HEADER)
    if delivery_id is None:
        report.problem(HEADER_MISSING)
        report.checks.append(
            Check(
                DELIVERY_HEADER,
                False,
                f"no {DELIVERY_HEADER} header: the body cannot be compared with what was sent",
            )
        )
        return None
    if not known or sent is None:
        report.problem(UNKNOWN_DELIVERY)
        report.checks.append(
            Check(
                DELIVERY_HEADER,
                False,
                f"{delivery_id!r} is not a delivery of this webhook that was attempted "
                "(another webhook's, or mistyped)",
            )
        )
        return None
    difference = body_difference(body, sent.body)
    if difference is not None:
        report.problem(BODY_MODIFIED)
    return difference


def _check_cloudthinker(value: str, body: str, keys: list[str], sent: Sent | None) -> Check:
    if not keys:
        return Check(CLOUDTHINKER, False, "the webhook has no valid secret to check with")
    if any(cloudthinker_matches(value, body, k) for k in keys):
        return Check(CLOUDTHINKER, True, "verifies: HMAC-SHA256 of the raw body", signed=body)
    if sent is not None and any(cloudthinker_matches(value, sent.body, k) for k in keys):
        reason = "does not verify over this body, but does over the body that was sent"
    else:
        reason = "does not verify with this secret over this body"
    return Check(CLOUDTHINKER, False, reason, signed=sent.body if sent is not None else body)


def _check_standard(
    report: Report,
    value: str,
    headers: Mapping[str, str],
    body: str,
    keys: list[str],
    sent: Sent | None,
    now: datetime,
) -> Check:
    msg_id, timestamp = header(headers, "webhook-id"), header(headers, "webhook-timestamp")
    if msg_id is None or timestamp is None:
        report.problem(HEADER_MISSING)
        missing = " and ".join(
            n for n, v in (("webhook-id", msg_id), ("webhook-timestamp", timestamp)) if v is None
        )
        return Check(STANDARD, False, f"no {missing} header: the signed string needs it")
    content = signed_content(msg_id, timestamp, body)
    signed = signed_content(msg_id, timestamp, sent.body) if sent is not None else content
    if not keys:
        return Check(STANDARD, False, "the webhook has no valid secret to check with", signed)
    matches = any(standard_matches(value, content, k) for k in keys)
    if matches:
        reason = "verifies: HMAC-SHA256 of {webhook-id}.{webhook-timestamp}.{body}"
    elif sent is not None and any(standard_matches(value, signed, k) for k in keys):
        reason = "does not verify over this body, but does over the body that was sent"
    else:
        reason = "does not verify with this secret over {webhook-id}.{webhook-timestamp}.{body}"
    try:
        skew = int(_epoch(now) - int(timestamp))
    except ValueError:
        report.problem(TIMESTAMP_OUT_OF_RANGE)
        return Check(STANDARD, False, f"webhook-timestamp {timestamp!r} is not Unix seconds")
    if abs(skew) > TOLERANCE_SECONDS:
        report.problem(TIMESTAMP_OUT_OF_RANGE)
        when = "ago" if skew > 0 else "ahead"
        return Check(
            STANDARD,
            False,
            f"{reason}; webhook-timestamp {timestamp} is {abs(skew)} s {when}, and Standard "
            "Webhooks libraries refuse more than 5 minutes (a replayed old request, or the "
            "receiver's clock is off)",
            signed,
        )
    return Check(STANDARD, matches, reason, signed)


def _epoch(naive_utc: datetime) -> float:
    return (naive_utc - datetime(1970, 1, 1)).total_seconds()


# -- the receiver's own signature --------------------------------------------------------------


def _decode(computed: str) -> bytes | None:
    """The digest in a signature as a receiver may print it: hex or base64, with or without
    `sha256=` or `v1,`."""
    for prefix in ("sha256=", "v1,"):
        if computed.startswith(prefix):
            computed = computed[len(prefix) :]
    computed = computed.split()[0] if computed.split() else ""
    try:
        return bytes.fromhex(computed)
    except ValueError:
        pass
    try:
        return base64.b64decode(computed, validate=True)
    except (binascii.Error, ValueError):
        return None


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def _reserialised(body: str) -> Iterable[str]:
    """The ways a framework commonly serialises a parsed body again."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return []
    return {
        json.dumps(parsed),
        json.dumps(parsed, sort_keys=True),
        json.dumps(parsed, separators=(",", ":")),
        json.dumps(parsed, separators=(",", ":"), sort_keys=True),
        json.dumps(parsed, separators=(",", ":"), ensure_ascii=False),
        json.dumps(parsed, ensure_ascii=False),
        json.dumps(parsed, indent=2),
        body.strip(),
        body + "\n",
    } - {body}


def _explain_computed(
    report: Report,
    computed: str,
    body: str,
    headers: Mapping[str, str],
    keys: list[str],
    secrets: list[Secret],
    sent: Sent | None,
) -> None:
    """Name the mistake that reproduces the receiver's signature, when it is not the right one."""
    digest = _decode(computed)
    msg_id = header(headers, "webhook-id") or ""
    timestamp = header(headers, "webhook-timestamp") or ""
    original = sent.body if sent is not None else body
    right = [
        *(_mac(k.encode(), original) for k in keys),
        *(_mac(standard_key(k), signed_content(msg_id, timestamp, original)) for k in keys),
    ]
    if digest is not None and digest in right:
        report.checks.append(Check("computed", True, "your code computes the right signature"))
        return
    standard = computed.startswith("v1,") or not _is_hex(computed.removeprefix("sha256="))
    found = None
    if digest is not None:
        found = _mistake(digest, standard, original, msg_id, timestamp, keys, secrets)
    if found is None:
        found = (
            None,
            "matches none of the known mistakes (secret format, body only, a modified body, "
            "an earlier secret); check the algorithm is HMAC-SHA256",
        )
    code, reason = found
    if code is not None:
        report.problem(code)
    report.checks.append(Check("computed", False, f"your code's signature {reason}"))


def _mistake(
    digest: bytes,
    standard: bool,
    body: str,
    msg_id: str,
    timestamp: str,
    keys: list[str],
    secrets: list[Secret],
) -> tuple[str | None, str] | None:
    """The known mistake that yields `digest`; `standard` when it reads as a webhook-signature
    (`v1,` or base64) rather than an X-CloudThinker-Signature (`sha256=` or hex)."""
    content = signed_content(msg_id, timestamp, body)
    for k in keys:
        decoded = standard_key(k)
        whsec = k.startswith(SECRET_PREFIX)
        if standard and whsec and digest == _mac(k.encode(), content):
            return SECRET_FORMAT, (
                "used the whsec_ secret's text as the key: for webhook-signature the key is "
                "the base64-decoded part after whsec_"
            )
        if not standard and whsec and digest == _mac(decoded, body):
            return SECRET_FORMAT, (
                "used the base64-decoded secret as the key: for X-CloudThinker-Signature the "
                "key is the whole secret's UTF-8 bytes, whsec_ included"
            )
        if standard and digest in (_mac(decoded, body), _mac(k.encode(), body)):
            return SIGNED_BODY_ONLY, (
                "was computed over the body alone: webhook-signature signs "
                "{webhook-id}.{webhook-timestamp}.{body}"
            )
        for other in _reserialised(body):
            if digest in (
                _mac(k.encode(), other),
                _mac(decoded, signed_content(msg_id, timestamp, other)),
            ):
                return BODY_MODIFIED, (
                    f"was computed over another body: {body_difference(other, body)}"
                )
    for s in secrets:
        if s.value in keys:
            continue
        if digest in (_mac(s.value.encode(), body), _mac(standard_key(s.value), content)):
            return WRONG_SECRET, "was computed with an earlier secret of this webhook"
    return None


# -- replaying -----------------------------------------------------------------------------------

# What curl sets by itself from the URL and the body.
_CURL_OWNS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def replay_command(url: str, sent: Sent) -> str:
    """A `curl` that sends an attempt's exact body and headers again, to `url`."""
    lines = [f"curl -sS {shlex.quote(url)}"]
    for name, value in sent.headers.items():
        if name.lower() not in _CURL_OWNS:
            lines.append(f"  -H {shlex.quote(f'{name}: {value}')}")
    lines.append(f"  --data-binary {shlex.quote(sent.body)}")
    return " \\\n".join(lines)


# -- against the database ----------------------------------------------------------------------


def sent_for(
    session: Session, webhook_id: str, delivery_id: str | None, timestamp: str | None
) -> Sent | None:
    """What was sent in the attempt of this webhook's delivery signed at `timestamp` (else its
    latest attempt), or None when the delivery is not this webhook's or was never attempted."""
    if not delivery_id:
        return None
    attempts = session.scalars(
        select(Attempt)
        .join(Delivery, Delivery.id == Attempt.delivery_id)
        .where(Delivery.id == delivery_id, Delivery.webhook_id == webhook_id)
        .order_by(Attempt.number.desc())
    ).all()
    for attempt in attempts:
        if (
            timestamp is not None
            and header(attempt.request_headers, "webhook-timestamp") == timestamp
        ):
            return Sent(attempt.request_body, dict(attempt.request_headers))
    if attempts:
        return Sent(attempts[0].request_body, dict(attempts[0].request_headers))
    return None


def check(
    session: Session,
    webhook: Webhook,
    body: str,
    headers: Mapping[str, str],
    *,
    secret: str | None = None,
    computed: str | None = None,
    now: datetime,
) -> Report:
    """The debugger's answer for a request a receiver of `webhook` got."""
    logged = sent_for(
        session, webhook.id, header(headers, DELIVERY_HEADER), header(headers, "webhook-timestamp")
    )
    sent = logged
    if logged is not None and credentials.mask_body(body) == logged.body:
        # The log keeps credentials masked (a PagerDuty routing_key): a body that masks to the
        # logged one is the body that was sent, and the signatures are checked over it.
        sent = Sent(body, logged.headers)
    report = verify(
        body=body,
        headers=headers,
        secrets=[Secret(s.secret, s.expires_at) for s in webhook.secrets],
        sent=sent,
        delivery_known=sent is not None,
        now=now,
        secret=secret,
        computed=computed,
    )
    # What the report shows stays as masked as the log.
    for c in report.checks:
        c.signed = credentials.mask_body(c.signed) if c.signed is not None else None
    return report
