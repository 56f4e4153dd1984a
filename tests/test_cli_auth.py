"""``flask auth token``, and the ``flask stats`` commands running without any JWT setting."""

import jwt
import pytest

from tests.expected import wrong_members
from toutiao import create_app, tokens


def invoke(config, args, **overrides):
    for name, value in overrides.items():
        setattr(config, name, value)
    return create_app(config).test_cli_runner().invoke(args=args)


def test_auth_token_prints_an_access_token_alone_on_stdout(config):
    result = invoke(config, ["auth", "token", "42"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1
    claims = jwt.decode(result.stdout.strip(), config.JWT_SECRET, algorithms=["HS256"])
    assert claims["user_id"] == 42 and "refresh" not in claims
    assert claims["exp"] - claims["iat"] == 2 * 3600


def test_auth_token_refresh_prints_a_refresh_token_living_jwt_refresh_days(config):
    result = invoke(config, ["auth", "token", "42", "--refresh"], JWT_REFRESH_DAYS="3")
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.stdout.strip(), config.JWT_SECRET, algorithms=["HS256"])
    assert claims["refresh"] is True and claims["exp"] - claims["iat"] == 3 * 86400
    assert tokens.verify(result.stdout.strip(), [config.JWT_SECRET], refresh=True) == 42


@pytest.mark.parametrize("user_id", ["0", "-1", "abc", str(2**63)])
def test_auth_token_refuses_a_user_id_out_of_range_with_exit_2(config, user_id):
    result = invoke(config, ["auth", "token", "--", user_id])
    assert result.exit_code == 2
    assert "USER_ID" in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"JWT_SECRET": None}, "JWT_SECRET"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET"),
        ({"JWT_PREVIOUS_SECRET": "short"}, "JWT_PREVIOUS_SECRET"),
        ({"JWT_EXPIRY_HOURS": "0"}, "JWT_EXPIRY_HOURS"),
        ({"JWT_EXPIRY_HOURS": "nan"}, "JWT_EXPIRY_HOURS"),
        ({"JWT_REFRESH_DAYS": "366"}, "JWT_REFRESH_DAYS"),
    ],
)
def test_auth_token_with_a_bad_setting_exits_2_naming_it(config, overrides, named):
    args = ["auth", "token", "1"] + (["--refresh"] if "JWT_REFRESH_DAYS" in overrides else [])
    result = invoke(config, args, **overrides)
    assert result.exit_code == 2
    assert named in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("secret", [None, "short", "x"])
def test_stats_fix_runs_on_real_servers_without_reading_jwt_secret(drifted, redis, config, secret):
    """No JWT_SECRET, or one the web app would refuse: the stats commands never look at it."""
    assert wrong_members(drifted, redis) != {}
    result = invoke(config, ["stats", "fix"], JWT_SECRET=secret, JWT_EXPIRY_HOURS="not a number")
    assert result.exit_code == 0, result.output
    assert wrong_members(drifted, redis) == {}


def test_auth_token_on_the_embedded_defaults_is_accepted_by_another_app_there(tmp_path, monkeypatch):
    """The generated secret lives in the instance folder: the CLI and every worker share it."""
    monkeypatch.setenv("TOUTIAO_INSTANCE_PATH", str(tmp_path))
    for name in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "JWT_PREVIOUS_SECRET"):
        monkeypatch.delenv(name, raising=False)
    result = create_app().test_cli_runner().invoke(args=["auth", "token", "7"])
    assert result.exit_code == 0, result.output
    server = create_app()
    assert tokens.verify(result.stdout.strip(), tokens.keys(server.config, server.instance_path)) == 7
    assert (tmp_path / tokens.DEV_SECRET_FILE).read_text() not in result.stdout
