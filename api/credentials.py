"""Envelope encryption of secrets at rest: broker credentials and TOTP secrets.

Rules:

- Every sealed record gets a fresh random 32-byte *data key*. The plaintext is encrypted
  under it with AES-256-GCM (a random 12-byte nonce prepended to the ciphertext) and bound
  to an AAD naming where it lives (``broker_credentials/7/secret``), so a ciphertext copied
  to another row or field does not decrypt.
- The data key is stored *wrapped* (AES-256-GCM again) by the current master key, with the
  master key id as AAD, and the id is stored next to it: old rows keep naming their key.
- Master keys come only from the environment, ``TICKTAPE_MASTER_KEYS="k2:<b64>,k1:<b64>"``
  (first = current). To rotate: put a new key first, run :func:`rotate_master_key`, which
  rewraps every data key (broker credentials and TOTP secrets) without touching any
  ciphertext, then drop the old key from the variable.
- Nothing here logs, and no ``repr`` shows key material or plaintext.

>>> import base64
>>> box = SecretBox(MasterKeys.parse("k1:" + base64.b64encode(bytes(range(32))).decode()))
>>> sealed = box.encrypt(b"api-secret", aad=b"demo/1/secret")
>>> box.decrypt(sealed, aad=b"demo/1/secret"), sealed.key_id
(b'api-secret', 'k1')
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg.types.json import Jsonb

KEY_BYTES = 32
NONCE_BYTES = 12
MASTER_KEYS_VAR = "TICKTAPE_MASTER_KEYS"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,50}$")  # broker_credentials.encryption_key_id is VARCHAR(50)
_BLOB_MAGIC = b"TTS1"


class CryptoError(Exception):
    """A sealed value could not be opened: stop and report (never retried)."""


class UnknownKeyIdError(CryptoError):
    """The data key is wrapped by a master key that is not configured."""


class DecryptionError(CryptoError):
    """Authentication failed: tampered ciphertext/wrapped key, or the wrong AAD."""


@dataclass(frozen=True)
class Sealed:
    """A ciphertext (nonce first), its data key wrapped by master key ``key_id``."""

    ciphertext: bytes = field(repr=False)
    wrapped_data_key: bytes = field(repr=False)
    key_id: str

    def __repr__(self) -> str:
        return f"Sealed(key_id={self.key_id!r}, ciphertext=<{len(self.ciphertext)} bytes>)"

    def to_bytes(self) -> bytes:
        """One self-describing blob, for a single BYTEA column (``users.totp_secret_enc``)."""
        kid = self.key_id.encode()
        return (
            _BLOB_MAGIC
            + struct.pack(">BH", len(kid), len(self.wrapped_data_key))
            + kid
            + self.wrapped_data_key
            + self.ciphertext
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> Sealed:
        head = len(_BLOB_MAGIC) + 3
        if not blob.startswith(_BLOB_MAGIC) or len(blob) < head:
            msg = f"expected a sealed blob starting with {_BLOB_MAGIC!r}, got {len(blob)} bytes of something else"
            raise DecryptionError(msg)
        kid_len, wrapped_len = struct.unpack(">BH", blob[len(_BLOB_MAGIC) : head])
        kid_end = head + kid_len
        wrapped_end = kid_end + wrapped_len
        if len(blob) < wrapped_end:
            msg = "sealed blob is truncated"
            raise DecryptionError(msg)
        return cls(blob[wrapped_end:], blob[kid_end:wrapped_end], blob[head:kid_end].decode())


def _decode_key(key_id: str, text: str) -> bytes:
    t = text.strip().replace("-", "+").replace("_", "/")  # accept URL-safe base64 too
    try:
        key = base64.b64decode(t + "=" * (-len(t) % 4), validate=True)
    except (binascii.Error, ValueError):
        msg = f"master key {key_id!r}: expected base64 of {KEY_BYTES} bytes, got something that is not base64"
        raise ValueError(msg) from None
    return key


class MasterKeys:
    """Master keys by id; the first one is current (used for every new wrap).

    ``repr`` shows ids only.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str | None = None) -> None:
        if not keys:
            msg = "expected at least one master key"
            raise ValueError(msg)
        for kid, key in keys.items():
            if not _KEY_ID.fullmatch(kid):
                msg = f"master key id {kid!r}: expected 1-50 of [A-Za-z0-9_.-]"
                raise ValueError(msg)
            if len(key) != KEY_BYTES:
                msg = f"master key {kid!r}: expected {KEY_BYTES} bytes, got {len(key)}"
                raise ValueError(msg)
        self._keys = dict(keys)
        self.current_id = current if current is not None else next(iter(self._keys))
        if self.current_id not in self._keys:
            msg = f"current master key {self.current_id!r} is not among {list(self._keys)}"
            raise ValueError(msg)

    @classmethod
    def parse(cls, text: str) -> MasterKeys:
        """Parse ``"k2:<base64>,k1:<base64>"``; the first entry is current."""
        keys: dict[str, bytes] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            kid, sep, b64 = part.partition(":")
            if not sep or not kid:
                msg = "expected comma-separated key_id:base64 entries"
                raise ValueError(msg)
            if kid in keys:
                msg = f"master key id {kid!r} appears twice"
                raise ValueError(msg)
            keys[kid] = _decode_key(kid, b64)
        return cls(keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> MasterKeys:
        """Read ``TICKTAPE_MASTER_KEYS``; outside ``TICKTAPE_ENV=dev`` refuse trivial keys."""
        text = environ.get(MASTER_KEYS_VAR, "")
        if not text.strip():
            msg = f"{MASTER_KEYS_VAR} is not set (expected key_id:base64-of-32-bytes[,...])"
            raise ValueError(msg)
        try:
            keys = cls.parse(text)
        except ValueError as exc:
            msg = f"{MASTER_KEYS_VAR}: {exc}"
            raise ValueError(msg) from None
        if environ.get("TICKTAPE_ENV", "dev") != "dev":
            for kid, key in keys._keys.items():
                if len(set(key)) < 8:  # all-zero and other placeholder keys
                    msg = f"{MASTER_KEYS_VAR}: master key {kid!r} is a placeholder, refused outside dev"
                    raise ValueError(msg)
        return keys

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def get(self, key_id: str) -> bytes:
        try:
            return self._keys[key_id]
        except KeyError:
            msg = (
                f"data key is wrapped by master key {key_id!r}, which is not configured "
                f"(have {self.ids}); add it to {MASTER_KEYS_VAR}"
            )
            raise UnknownKeyIdError(msg) from None

    def __repr__(self) -> str:
        return f"MasterKeys(current={self.current_id!r}, ids={self.ids!r})"


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, blob: bytes, aad: bytes, what: str) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        msg = f"{what} failed authentication (tampered, or opened with the wrong AAD/key)"
        raise DecryptionError(msg) from None


class SecretBox:
    """Seals and opens values with per-record data keys wrapped by :class:`MasterKeys`."""

    def __init__(self, master_keys: MasterKeys) -> None:
        self._keys = master_keys

    def __repr__(self) -> str:
        return f"SecretBox({self._keys!r})"

    @property
    def current_key_id(self) -> str:
        return self._keys.current_id

    def _wrap(self, data_key: bytes) -> tuple[bytes, str]:
        kid = self._keys.current_id
        return _seal(self._keys.get(kid), data_key, kid.encode()), kid

    def _unwrap(self, wrapped: bytes, key_id: str) -> bytes:
        return _open(self._keys.get(key_id), wrapped, key_id.encode(), f"data key wrapped by {key_id!r}")

    def encrypt(self, plaintext: bytes, aad: bytes) -> Sealed:
        """Seal one value under a fresh data key."""
        return self.encrypt_many([(plaintext, aad)])[0]

    def encrypt_many(self, items: Sequence[tuple[bytes, bytes]]) -> list[Sealed]:
        """Seal several ``(plaintext, aad)`` values of one record under one fresh data key.

        All results share ``wrapped_data_key``/``key_id``, so a row stores the wrapped key once.
        """
        data_key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        wrapped, kid = self._wrap(data_key)
        return [Sealed(_seal(data_key, pt, aad), wrapped, kid) for pt, aad in items]

    def decrypt(self, sealed: Sealed, aad: bytes) -> bytes:
        """Open a value; raises :class:`UnknownKeyIdError` or :class:`DecryptionError`."""
        data_key = self._unwrap(sealed.wrapped_data_key, sealed.key_id)
        return _open(data_key, sealed.ciphertext, aad, "ciphertext")

    def rewrap(self, sealed: Sealed) -> Sealed:
        """Re-wrap the data key with the current master key; the ciphertext is untouched."""
        if sealed.key_id == self._keys.current_id:
            return sealed
        wrapped, kid = self._wrap(self._unwrap(sealed.wrapped_data_key, sealed.key_id))
        return Sealed(sealed.ciphertext, wrapped, kid)


@dataclass(frozen=True)
class BrokerCredentials:
    """Decrypted credentials of one broker_credentials row (repr hides the secrets)."""

    id: int
    broker_name: str
    api_key: str = field(repr=False)
    secret: str = field(repr=False)
    config: dict[str, Any]
    key_id: str


def _aad(row_id: int, column: str) -> bytes:
    # Binds a ciphertext to its row and column: moving it elsewhere makes it undecryptable.
    return f"broker_credentials/{row_id}/{column}".encode()


def store_broker_credentials(
    conn: psycopg.Connection,
    box: SecretBox,
    broker_name: str,
    api_key: str,
    secret: str,
    config: Mapping[str, Any] | None = None,
) -> int:
    """Insert a row with the api key and secret sealed under one data key; returns its id.

    ``config`` is stored in plain JSON: it must not hold secrets.
    """
    with conn.transaction():
        row = conn.execute("SELECT nextval(pg_get_serial_sequence('broker_credentials', 'id'))").fetchone()
        assert row is not None
        row_id = int(row[0])
        key_ct, secret_ct = box.encrypt_many(
            [(api_key.encode(), _aad(row_id, "api_key")), (secret.encode(), _aad(row_id, "secret"))]
        )
        conn.execute(
            "INSERT INTO broker_credentials (id, broker_name, encrypted_api_key, encrypted_secret,"
            " wrapped_data_key, encryption_key_id, config) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                row_id,
                broker_name,
                key_ct.ciphertext,
                secret_ct.ciphertext,
                key_ct.wrapped_data_key,
                key_ct.key_id,
                Jsonb(dict(config or {})),
            ),
        )
    return row_id


def load_broker_credentials(conn: psycopg.Connection, box: SecretBox, credentials_id: int) -> BrokerCredentials:
    """Read and decrypt one row; ``LookupError`` if absent, :class:`CryptoError` if it won't open."""
    row = conn.execute(
        "SELECT broker_name, encrypted_api_key, encrypted_secret, wrapped_data_key, encryption_key_id, config"
        " FROM broker_credentials WHERE id = %s",
        (credentials_id,),
    ).fetchone()
    if row is None:
        msg = f"no broker_credentials row with id={credentials_id}"
        raise LookupError(msg)
    name, key_ct, secret_ct, wrapped, kid, config = row
    api_key = box.decrypt(Sealed(bytes(key_ct), bytes(wrapped), kid), _aad(credentials_id, "api_key"))
    secret = box.decrypt(Sealed(bytes(secret_ct), bytes(wrapped), kid), _aad(credentials_id, "secret"))
    return BrokerCredentials(credentials_id, name, api_key.decode(), secret.decode(), dict(config), kid)


def rotate_master_key(conn: psycopg.Connection, box: SecretBox) -> int:
    """Rewrap every data key still on an old master key; returns how many rows changed.

    Covers ``broker_credentials`` and the sealed TOTP secrets in ``users``. Ciphertexts are
    not touched. One transaction: a row on an unknown key id stops it with nothing changed.
    """
    count = 0
    with conn.transaction():
        rows = conn.execute(
            "SELECT id, wrapped_data_key, encryption_key_id FROM broker_credentials"
            " WHERE encryption_key_id <> %s ORDER BY id FOR UPDATE",
            (box.current_key_id,),
        ).fetchall()
        for row_id, wrapped, kid in rows:
            new = box.rewrap(Sealed(b"", bytes(wrapped), kid))
            conn.execute(
                "UPDATE broker_credentials SET wrapped_data_key = %s, encryption_key_id = %s, updated_at = NOW()"
                " WHERE id = %s",
                (new.wrapped_data_key, new.key_id, row_id),
            )
            count += 1
        users = conn.execute(
            "SELECT id, totp_secret_enc FROM users WHERE totp_secret_enc IS NOT NULL ORDER BY id FOR UPDATE"
        )
        for user_id, blob in users.fetchall():
            sealed = Sealed.from_bytes(bytes(blob))
            if sealed.key_id != box.current_key_id:
                conn.execute("UPDATE users SET totp_secret_enc = %s WHERE id = %s", (box.rewrap(sealed).to_bytes(), user_id))
                count += 1
    return count
