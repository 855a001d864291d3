"""Signed decisions: a reviewer's approve or reject as an in-toto statement in a DSSE envelope.

The statement names what was decided (agent, version), on what evidence (the SHA-256 of the
model's artifacts and of its evaluation report), by whom and when. The envelope carries it with
an Ed25519 signature over DSSE's pre-authentication encoding (PAE), the shape Sigstore and
in-toto attestations use::

    {"payloadType": "application/vnd.in-toto+json",
     "payload": base64(statement JSON),
     "signatures": [{"keyid": "<sha256 of the public key, 16 hex>", "sig": base64(signature)}]}

    statement = {"_type": "https://in-toto.io/Statement/v1",
                 "subject": [{"name": "models:/<agent>/<version>",
                              "digest": {"sha256": "<artifacts digest>"}}],
                 "predicateType": "https://agentops-pipelines.dev/decision/v1",
                 "predicate": {"agent", "version", "decision", "reviewer", "decided_at",
                               "evaluation_report": {"sha256": ...}, "comment"}}

Anyone may read an envelope; only the holder of the reviewer's private key can make one that
verifies against the reviewer's public key in the approvers file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://agentops-pipelines.dev/decision/v1"
DECISIONS = ("approved", "rejected")
PUBLIC_KEY_PREFIX = "ed25519:"
_REVIEWER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_ENVELOPE_BYTES = 8000  # an MLflow tag value holds it; anything larger is not ours


class SignatureError(ValueError):
    """An envelope or statement that does not verify; the message says why."""


def valid_reviewer(name: str) -> str:
    if not isinstance(name, str) or not _REVIEWER.match(name):
        raise ValueError(f"invalid reviewer name {name!r}: letters, digits and . _ @ - (at most 64)")
    return name


@dataclass(frozen=True)
class Decision:
    """What a reviewer signs."""

    agent: str
    version: str
    decision: str  # approved | rejected
    reviewer: str
    artifacts_sha256: str
    report_sha256: str
    decided_at: str
    comment: str = ""

    def __post_init__(self):
        if self.decision not in DECISIONS:
            raise SignatureError(f"decision must be one of {DECISIONS}, not {self.decision!r}")
        valid_reviewer(self.reviewer)
        if not str(self.version).isdigit():
            raise SignatureError(f"version must be a registered version number, not {self.version!r}")
        for name in ("artifacts_sha256", "report_sha256"):
            if not _SHA256.match(getattr(self, name) or ""):
                raise SignatureError(f"{name} must be a SHA-256 hex digest")

    @property
    def subject(self) -> str:
        return f"models:/{self.agent}/{self.version}"

    def statement(self) -> dict:
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.subject, "digest": {"sha256": self.artifacts_sha256}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "agent": self.agent, "version": str(self.version), "decision": self.decision,
                "reviewer": self.reviewer, "decided_at": self.decided_at,
                "evaluation_report": {"sha256": self.report_sha256}, "comment": self.comment,
            },
        }

    @classmethod
    def from_statement(cls, statement: dict) -> Decision:
        try:
            if statement["_type"] != STATEMENT_TYPE or statement["predicateType"] != PREDICATE_TYPE:
                raise SignatureError("not an agentops decision statement")
            (subject,) = statement["subject"]
            p = statement["predicate"]
            decision = cls(agent=str(p["agent"]), version=str(p["version"]), decision=p["decision"],
                           reviewer=p["reviewer"], artifacts_sha256=subject["digest"]["sha256"],
                           report_sha256=p["evaluation_report"]["sha256"],
                           decided_at=str(p["decided_at"]), comment=str(p.get("comment", "")))
        except SignatureError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SignatureError(f"malformed decision statement ({type(exc).__name__}: {exc})") from None
        if subject.get("name") != decision.subject:
            raise SignatureError(f"statement subject {subject.get('name')!r} does not match its predicate")
        return decision


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_id(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(public_key) -> str:
    """``ed25519:<base64>``: how the approvers file writes a public key."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(text, str) or not text.startswith(PUBLIC_KEY_PREFIX):
        raise ValueError(f"a public key is written '{PUBLIC_KEY_PREFIX}<base64>' (agentops keygen prints it)")
    try:
        raw = base64.b64decode(text.removeprefix(PUBLIC_KEY_PREFIX), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ValueError(f"not an Ed25519 public key: {exc}") from None


def generate_key(path: Path) -> str:
    """A new Ed25519 private key at ``path`` (PEM, mode 0600, never overwritten); returns the
    public key text for the approvers file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # refuses to overwrite
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return public_key_text(key.public_key())


def load_private_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SignatureError(f"no signing key at {path} (create one with `agentops keygen`)") from None
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise SignatureError(f"{path} is readable by other users: chmod 600 {path}")
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def sign(decision: Decision, private_key) -> str:
    """The DSSE envelope (compact JSON) for ``decision``."""
    payload = json.dumps(decision.statement(), sort_keys=True, separators=(",", ":")).encode()
    signature = private_key.sign(_pae(PAYLOAD_TYPE, payload))
    return json.dumps({
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key_id(private_key.public_key()),
                        "sig": base64.b64encode(signature).decode()}],
    }, sort_keys=True, separators=(",", ":"))


def envelope_digest(envelope: str) -> str:
    return hashlib.sha256(envelope.encode()).hexdigest()


def verify(envelope: str, public_keys: dict[str, object]) -> Decision:
    """The decision in ``envelope`` if it carries a valid signature by the reviewer it names,
    whose public key is ``public_keys[reviewer]``; SignatureError otherwise."""
    from cryptography.exceptions import InvalidSignature

    if not isinstance(envelope, str) or len(envelope.encode()) > MAX_ENVELOPE_BYTES:
        raise SignatureError("not a decision envelope (missing or too large)")
    try:
        env = json.loads(envelope)
        if env["payloadType"] != PAYLOAD_TYPE:
            raise SignatureError(f"unexpected payloadType {env['payloadType']!r}")
        payload = base64.b64decode(env["payload"], validate=True)
        signatures = env["signatures"]
        statement = json.loads(payload)
    except SignatureError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"malformed envelope ({type(exc).__name__})") from None
    decision = Decision.from_statement(statement)
    key = public_keys.get(decision.reviewer)
    if key is None:
        raise SignatureError(f"{decision.reviewer!r} is not an approver")
    for entry in signatures if isinstance(signatures, list) else []:
        try:
            if entry.get("keyid") != key_id(key):
                continue
            key.verify(base64.b64decode(entry["sig"], validate=True), _pae(PAYLOAD_TYPE, payload))
            return decision
        except (InvalidSignature, ValueError, KeyError, TypeError, AttributeError):
            continue
    raise SignatureError(f"no valid signature by {decision.reviewer!r}'s registered key")
