"""JSON Web Tokens as the original toutiao issues them: HS256, a ``user_id`` claim and ``exp``.

A refresh token carries ``refresh: true`` and lives longer; it only buys a new access
token and is refused where an access token is expected, and the other way round.
Tokens are verified with ``JWT_SECRET`` and, while a secret is being rotated, with
``JWT_PREVIOUS_SECRET`` too; they are always signed with ``JWT_SECRET``.
"""

import os
import secrets as random_secrets
from datetime import datetime, timedelta, timezone

import jwt

from common.cache.members import MAX_SIGNED_ID, is_id
from toutiao.config import SettingError, number

#: The only algorithm accepted: a token saying ``none`` or ``RS256`` is refused whatever it holds.
ALGORITHM = "HS256"
#: Seconds of clock difference between the host that signed a token and the one checking it.
LEEWAY = 10
#: The largest user id (the models' BIGINT ids, signed on every backend).
MAX_USER_ID = MAX_SIGNED_ID
#: Bytes of entropy HS256 needs (RFC 7518: a key at least as long as the hash).
MIN_SECRET_LENGTH = 32
#: The generated secret of the embedded defaults, in the instance folder.
DEV_SECRET_FILE = "jwt-dev-secret"


class TokenError(Exception):
    """A token that proves nothing: missing, malformed, forged, expired or of the wrong kind."""


def embedded(config) -> bool:
    """Whether ``config`` is the embedded defaults (neither DATABASE_URL nor REDIS_URL)."""
    return not config.get("DATABASE_URL") and not config.get("REDIS_URL")


def require_secret(config) -> None:
    """Raise SettingError unless ``config`` has a usable JWT_SECRET or is the embedded defaults."""
    for name in ("JWT_SECRET", "JWT_PREVIOUS_SECRET"):
        value = config.get(name)
        if value and len(value) < MIN_SECRET_LENGTH:
            raise SettingError(f"{name} must be at least {MIN_SECRET_LENGTH} characters, got {len(value)}")
    if not config.get("JWT_SECRET") and not embedded(config):
        raise SettingError(
            "JWT_SECRET is not set: the web app signs and checks tokens with it and does not serve "
            "a real database or Redis without it"
        )


def keys(config, instance_path) -> list[str]:
    """Return the secrets a token may be verified with, the signing one first.

    The embedded defaults without JWT_SECRET use a secret generated once into the instance
    folder, shared by every worker and by ``flask auth token``.
    """
    require_secret(config)
    signing = config.get("JWT_SECRET") or dev_secret(instance_path)
    return [signing] + ([config["JWT_PREVIOUS_SECRET"]] if config.get("JWT_PREVIOUS_SECRET") else [])


def dev_secret(instance_path) -> str:
    """Return the embedded defaults' secret, creating it (readable by its owner only) if needed."""
    path = os.path.join(instance_path, DEV_SECRET_FILE)
    os.makedirs(instance_path, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path) as file:
            value = file.read().strip()
        if len(value) < MIN_SECRET_LENGTH:
            raise SettingError(f"{path} holds no usable secret; delete it to have a new one generated") from None
        return value
    value = random_secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as file:
        file.write(value)
    return value


def lifetime(config, refresh: bool) -> timedelta:
    """Return how long a new token lives (JWT_REFRESH_DAYS or JWT_EXPIRY_HOURS)."""
    if refresh:
        return timedelta(days=number(config, "JWT_REFRESH_DAYS"))
    return timedelta(hours=number(config, "JWT_EXPIRY_HOURS"))


def mint(secret: str, user_id: int, expires_in: timedelta, refresh: bool = False, now=None) -> str:
    """Return a token for ``user_id`` signed with ``secret``, valid for ``expires_in`` from ``now``."""
    now = now or datetime.now(timezone.utc)
    claims = {"user_id": user_id, "iat": now, "exp": now + expires_in}
    if refresh:
        claims["refresh"] = True
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(token: str, secrets: list[str], refresh: bool = False) -> int:
    """Return the user id of a valid ``token``; raise TokenError saying what is wrong with it.

    ``refresh`` says which kind is expected: an access token (False) or a refresh token.
    """
    claims = None
    for secret in secrets:
        try:
            claims = jwt.decode(
                token, secret, algorithms=[ALGORITHM], leeway=LEEWAY, options={"require": ["exp", "user_id"]}
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("the token is not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise TokenError(f"the token is not signed with {ALGORITHM}") from None
        except jwt.InvalidTokenError:
            raise TokenError("the token is malformed") from None
    if claims is None:
        raise TokenError("the token's signature is not valid")
    if (claims.get("refresh") is True) != refresh:
        raise TokenError("send a refresh token" if refresh else "a refresh token is not an access token")
    user_id = claims["user_id"]
    if not is_id(user_id, MAX_USER_ID):
        raise TokenError("the token's user_id is not a user id")
    return user_id
