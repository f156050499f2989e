"""Encryption at rest for the secrets b24q keeps in Redis: access tokens, refresh tokens, webhook URLs.

Set `B24Q_TOKEN_KEYS` to one or more Fernet keys, comma-separated (`b24q portal genkey` makes
one). The first key encrypts; every key decrypts, so keys rotate without downtime:

1. put the new key first and keep the old one after it (`B24Q_TOKEN_KEYS=new,old`), restart producers and
   workers: new writes use the new key, old records still decrypt;
2. run `b24q portal rekey` to re-encrypt every portal record with the new key;
3. drop the old key from `B24Q_TOKEN_KEYS`.

Encrypted values are stored as `enc1:<Fernet token>` (AES-128-CBC + HMAC-SHA256, from the `cryptography`
package). Records written before a key was configured stay readable as plaintext; `rekey` encrypts them.
Without any key, values are stored as they are (Redis ACLs and TLS are then the only protection).
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from workers.errors import ConfigError

#: Marks an encrypted value (and its format version).
PREFIX = "enc1:"


def generate_key() -> str:
    """A fresh random key for `B24Q_TOKEN_KEYS`."""
    return Fernet.generate_key().decode()


def parse_keys(raw: str) -> list[str]:
    """`B24Q_TOKEN_KEYS` as a list (comma- or whitespace-separated; empty items ignored)."""
    return [k.strip() for k in raw.replace("\n", ",").replace(" ", ",").split(",") if k.strip()]


class TokenCipher:
    """Encrypts with the first key, decrypts with any; passes values through when no key is configured.

    Examples:
        >>> cipher = TokenCipher([generate_key()])
        >>> stored = cipher.encrypt("secret-token")
        >>> stored.startswith(PREFIX), cipher.decrypt(stored)
        (True, 'secret-token')
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        fernets = []
        for index, key in enumerate(keys):
            try:
                fernets.append(Fernet(key.encode() if isinstance(key, str) else key))
            except (ValueError, TypeError):
                # never echo the key itself
                raise ConfigError(
                    f"B24Q_TOKEN_KEYS: key #{index + 1} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes; `b24q portal genkey` makes one)"
                ) from None
        self._fernet = MultiFernet(fernets) if fernets else None

    @classmethod
    def from_raw(cls, raw: str) -> TokenCipher:
        return cls(parse_keys(raw))

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    @staticmethod
    def is_encrypted(value: str) -> bool:
        return value.startswith(PREFIX)

    def encrypt(self, value: str) -> str:
        """The value to store: encrypted with the first key, or unchanged without keys (or when empty)."""
        if self._fernet is None or not value:
            return value
        return PREFIX + self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, value: str, what: str = "a portal secret") -> str:
        """The plaintext of a stored value (plaintext values pass through: records older than the key)."""
        if not value.startswith(PREFIX):
            return value
        if self._fernet is None:
            raise ConfigError(f"{what} is encrypted in Redis but B24Q_TOKEN_KEYS is not set")
        try:
            return self._fernet.decrypt(value[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise ConfigError(f"{what}: no key in B24Q_TOKEN_KEYS decrypts it (was a key dropped too early?)") from None

    def reencrypt(self, value: str, what: str = "a portal secret") -> str:
        """Decrypt with any key, encrypt with the first (for `rekey`)."""
        return self.encrypt(self.decrypt(value, what))
