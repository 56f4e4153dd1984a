"""Bearer tokens on the API: only a valid HS256 access token of an enabled user gets in,
and a refresh token buys a new access token, on the real MariaDB and Redis."""

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from common.models import Relation, User
from tests.tokens import as_user, bearer, token_for
from toutiao import create_app, tokens

A, B, DISABLED = 1, 2, 3
FOLLOW_B = {"target": B}
OTHER_SECRET = "another secret, not the app's: " + "y" * 32


@pytest.fixture
def users(engine, redis):
    with Session(engine) as conn, conn.begin():
        conn.execute(
            insert(User),
            [
                {"id": i, "mobile": f"1380000000{i}", "name": f"user{i}", "status": int(i != DISABLED)}
                for i in (A, B, DISABLED)
            ],
        )


def follow(client, headers):
    return client.post("/v1_0/user/followings", json=FOLLOW_B, headers=headers)


def refresh(client, headers):
    return client.put("/v1_0/authorizations", headers=headers)


def signed(claims, secret=None, algorithm="HS256", app=None):
    """Return a token with exactly ``claims`` (times as offsets in seconds from now)."""
    now = datetime.now(timezone.utc)
    body = {k: now + timedelta(seconds=v) if k in ("exp", "iat", "nbf") else v for k, v in claims.items()}
    return jwt.encode(body, secret or tokens.keys(app.config, app.instance_path)[0], algorithm=algorithm)


def followings(engine):
    with engine.connect() as conn:
        return conn.execute(select(Relation.user_id, Relation.target_user_id)).all()


def assert_refused(response, status, fragment):
    assert response.status_code == status, response.get_data(True)
    assert response.is_json and fragment in response.get_json()["message"], response.get_json()


def test_an_access_token_lets_its_user_in(users, app, client, engine):
    response = follow(client, as_user(app, A))
    assert response.status_code == 201, response.get_json()
    assert followings(engine) == [(A, B)]


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


KEY = rsa_key()
LIVE = {"user_id": A, "exp": 3600}

# name: (a function of the app returning the Authorization header, a fragment of the 401 message)
BAD_TOKENS = {
    "no header": (lambda app: {}, "Authorization: Bearer"),
    "another scheme": (lambda app: {"Authorization": "Basic dXNlcjpwYXNz"}, "Authorization: Bearer"),
    "bearer with no token": (lambda app: {"Authorization": "Bearer "}, "Authorization: Bearer"),
    "malformed": (lambda app: bearer("not.a.jwt"), "malformed"),
    "forged signature": (lambda app: bearer(signed(LIVE, secret=OTHER_SECRET)), "signature"),
    "tampered claims": (
        lambda app: bearer(signed({"user_id": B, "exp": 3600}, app=app).rsplit(".", 1)[0] + "." + "A" * 43),
        "signature",
    ),
    "alg none": (lambda app: bearer(jwt.encode(LIVE | {"exp": 2**40}, None, algorithm="none")), "HS256"),
    "signed RS256": (lambda app: bearer(signed(LIVE, secret=KEY, algorithm="RS256")), "HS256"),
    "HS256 with the public key as secret": (
        lambda app: bearer(_hmac_with_public_key(LIVE | {"exp": 2**40})),
        "signature",
    ),
    "expired": (lambda app: bearer(signed({"user_id": A, "exp": -60}, app=app)), "expired"),
    "not valid before a future nbf": (lambda app: bearer(signed(LIVE | {"nbf": 600}, app=app)), "not valid yet"),
    "issued in the future": (lambda app: bearer(signed(LIVE | {"iat": 600}, app=app)), "not valid yet"),
    "no exp": (lambda app: bearer(signed({"user_id": A}, app=app)), "'exp'"),
    "no user_id": (lambda app: bearer(signed({"exp": 3600}, app=app)), "'user_id'"),
    "user_id as a string": (lambda app: bearer(signed({"user_id": "1", "exp": 3600}, app=app)), "user_id"),
    "user_id as a float": (lambda app: bearer(signed({"user_id": 1.0, "exp": 3600}, app=app)), "user_id"),
    "user_id as a boolean": (lambda app: bearer(signed({"user_id": True, "exp": 3600}, app=app)), "user_id"),
    "user_id 0": (lambda app: bearer(signed({"user_id": 0, "exp": 3600}, app=app)), "user_id"),
    "user_id past BIGINT": (lambda app: bearer(signed({"user_id": 2**63, "exp": 3600}, app=app)), "user_id"),
    "a refresh token as access token": (lambda app: as_user(app, A, refresh=True), "refresh token"),
    "a token naming no user": (lambda app: as_user(app, 999), "no user"),
}


def _hmac_with_public_key(claims):
    """HS256 keyed with the RSA public key: the algorithm confusion attack. PyJWT refuses to
    sign with a PEM key as an HMAC secret, so the signature is computed by hand."""

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(claims).encode())
    signature = hmac.new(public_pem(KEY), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


@pytest.mark.parametrize("headers, fragment", [pytest.param(*case, id=name) for name, case in BAD_TOKENS.items()])
def test_a_request_without_a_valid_access_token_is_401_and_changes_nothing(
    users, app, client, engine, headers, fragment
):
    response = follow(client, headers(app))
    assert_refused(response, 401, fragment)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert followings(engine) == []


def test_a_token_expired_within_the_leeway_is_still_accepted(users, app, client):
    assert follow(client, bearer(signed({"user_id": A, "exp": -2}, app=app))).status_code == 201


def test_a_disabled_user_is_403_with_an_access_or_a_refresh_token(users, app, client, engine):
    assert_refused(follow(client, as_user(app, DISABLED)), 403, "disabled")
    assert_refused(refresh(client, as_user(app, DISABLED, refresh=True)), 403, "disabled")
    assert followings(engine) == []


def test_a_refresh_token_buys_an_access_token_that_works(users, app, client, engine):
    response = refresh(client, as_user(app, A, refresh=True))
    assert response.status_code == 201
    body = response.get_json()
    assert body["message"] == "OK" and set(body["data"]) == {"token"}
    claims = jwt.decode(body["data"]["token"], app.config["JWT_SECRET"], algorithms=["HS256"])
    assert claims["user_id"] == A and "refresh" not in claims
    assert claims["exp"] - claims["iat"] == 2 * 3600
    assert follow(client, bearer(body["data"]["token"])).status_code == 201
    assert followings(engine) == [(A, B)]


@pytest.mark.parametrize(
    "headers, fragment",
    [
        pytest.param(lambda app: as_user(app, A), "send a refresh token", id="an access token"),
        pytest.param(lambda app: {}, "Authorization: Bearer", id="no token"),
        pytest.param(
            lambda app: bearer(signed({"user_id": A, "refresh": True, "exp": -60}, app=app)), "expired", id="expired"
        ),
        pytest.param(
            lambda app: bearer(signed({"user_id": A, "refresh": True, "exp": 3600}, secret=OTHER_SECRET)),
            "signature",
            id="forged",
        ),
    ],
)
def test_refreshing_without_a_valid_refresh_token_is_401(users, app, client, headers, fragment):
    assert_refused(refresh(client, headers(app)), 401, fragment)


def test_a_token_signed_with_the_previous_secret_is_accepted_while_rotating(users, config, engine):
    old = create_app(config)
    old_refresh = token_for(old, A, refresh=True)
    config.JWT_PREVIOUS_SECRET, config.JWT_SECRET = config.JWT_SECRET, OTHER_SECRET
    new = create_app(config).test_client()
    assert follow(new, as_user(old, A)).status_code == 201
    renewed = refresh(new, bearer(old_refresh)).get_json()["data"]["token"]
    assert jwt.decode(renewed, OTHER_SECRET, algorithms=["HS256"])["user_id"] == A
    config.JWT_PREVIOUS_SECRET = None
    assert_refused(follow(create_app(config).test_client(), as_user(old, A)), 401, "signature")


@pytest.mark.parametrize(
    "setting, value",
    [
        ("JWT_SECRET", None),
        ("JWT_SECRET", ""),
        ("JWT_SECRET", "short"),
        ("JWT_PREVIOUS_SECRET", "short"),
        ("JWT_EXPIRY_HOURS", "0"),
        ("JWT_EXPIRY_HOURS", "2.5"),
        ("JWT_REFRESH_DAYS", "inf"),
    ],
)
def test_the_web_app_refuses_to_serve_with_an_unusable_jwt_setting(config, caplog, setting, value):
    setattr(config, setting, value)
    response = create_app(config).test_client().get("/healthz")
    assert response.status_code == 500
    assert setting not in response.get_json()["message"]
    assert setting in caplog.text


def test_the_embedded_defaults_serve_with_a_generated_secret_shared_by_every_app(tmp_path, monkeypatch):
    monkeypatch.setenv("TOUTIAO_INSTANCE_PATH", str(tmp_path))
    for name in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "JWT_PREVIOUS_SECRET"):
        monkeypatch.delenv(name, raising=False)
    first, second = create_app(), create_app()
    assert first.test_client().get("/healthz").status_code == 200
    token = token_for(first, A)
    assert tokens.verify(token, tokens.keys(second.config, second.instance_path)) == A
    secret_file = tmp_path / tokens.DEV_SECRET_FILE
    assert secret_file.stat().st_mode & 0o777 == 0o600
