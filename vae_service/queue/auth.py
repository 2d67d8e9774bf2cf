"""Bearer tokens for the API.

Where they come from (first that is set): VAE_API_TOKEN (comma-separated), VAE_API_TOKEN_FILE
(one per line), else `<VAE_HOME>/api_token`, which `vae server` creates (mode 0600) with a
random token when no token is configured, so `vae server` + `vae submit` work in one directory
with no setup. An entry `name:token` names who submits with it (`submitted_by`); a bare token
is known by a fingerprint (`token-1a2b3c4d`, the first 8 hex digits of its SHA-256).

Admins (see queue/policy.py for what they may do): the names in VAE_ADMINS. When VAE_ADMINS is
unset (or empty) and the tokens name one identity only — the token `vae server` generates, or a single
VAE_API_TOKEN — that identity is admin, so a one-user setup needs no configuration; with several
identities and no VAE_ADMINS nobody is admin (everyone sees only their own jobs).

Tokens are compared in constant time (hmac.compare_digest on SHA-256 digests, every configured
token checked, no early exit) and are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vae_service.queue.settings import Settings


class TokenError(Exception):
    """No usable token configuration (one line for the user)."""


@dataclass(frozen=True)
class Identity:
    name: str
    admin: bool = False


def _parse(entries: list[str]) -> dict[bytes, str]:
    tokens: dict[bytes, str] = {}
    for entry in entries:
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, token = entry.partition(":")
        if not sep:
            name, token = "", entry
        token = token.strip()
        digest = hashlib.sha256(token.encode()).digest()
        tokens[digest] = name.strip() or f"token-{digest.hex()[:8]}"
    return tokens


def read_token_file(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError as exc:
        raise TokenError(f"cannot read the token file {path}: {exc.strerror or exc.__class__.__name__}") from None


class TokenSet:
    def __init__(self, tokens: dict[bytes, str], source: str, admins: Optional[frozenset[str]] = None):
        if not tokens:
            raise TokenError(f"no API token in {source}")
        self._tokens = tokens
        self.source = source
        names = frozenset(tokens.values())
        self.admins = admins if admins is not None else (names if len(names) == 1 else frozenset())

    @classmethod
    def from_settings(cls, settings: Settings, create: bool = False) -> "TokenSet":
        if settings.api_token is not None and settings.api_token.get_secret_value().strip():
            return cls(_parse(settings.api_token.get_secret_value().split(",")), "VAE_API_TOKEN", settings.admin_names)
        path = settings.token_file
        if settings.api_token_file is None and create and not path.exists():
            generate_token_file(path)
        return cls(_parse(read_token_file(path)), str(path), settings.admin_names)

    def identify(self, presented: Optional[str]) -> Optional[Identity]:
        """The owner of the presented token, or None. Constant time in the token's content."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for known, name in self._tokens.items():
            if hmac.compare_digest(digest, known):
                found = name
        return Identity(found, found in self.admins) if found is not None else None


def generate_token_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")


def client_token(settings: Settings) -> Optional[str]:
    """The token a client sends: VAE_API_TOKEN (its first entry), else the token file's first."""
    if settings.api_token is not None and settings.api_token.get_secret_value().strip():
        entries = settings.api_token.get_secret_value().split(",")
    else:
        try:
            entries = settings.token_file.read_text().splitlines()
        except OSError:
            return None
    for entry in entries:
        entry = entry.strip()
        if entry and not entry.startswith("#"):
            return entry.partition(":")[2].strip() if ":" in entry else entry
    return None
