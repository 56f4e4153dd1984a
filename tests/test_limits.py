"""Bounded input: every body, text and id is checked against its limit before it reaches
SQL, and answered 413 or 400 naming the limit, on the real MariaDB."""

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from common.models import Article, Comment, User
from tests.tokens import as_user
from toutiao import create_app

A, B, AUTHOR = 1, 2, 3
ARTICLE = 10
MAX_ID = 2**63 - 1


@pytest.fixture
def world(engine, redis):
    with Session(engine) as conn, conn.begin():
        conn.execute(insert(User), [{"id": i, "mobile": f"1380000000{i}", "name": f"user{i}"} for i in (A, B, AUTHOR)])
        conn.execute(insert(Article), [{"id": ARTICLE, "user_id": AUTHOR, "channel_id": 1, "title": "t", "status": 2}])


def comments(engine):
    with engine.connect() as conn:
        return conn.execute(select(Comment.content)).scalars().all()


def comment(client, content, **extra):
    body = {"target": ARTICLE, "content": content} | extra
    return client.post("/v1_0/comments", json=body, headers=as_user(client.application, A))


def assert_refused(response, status, *fragments):
    assert response.status_code == status, response.get_data(True)[:200]
    message = response.get_json()["message"]
    for fragment in fragments:
        assert fragment in message, message


def test_a_comment_of_exactly_the_column_length_is_stored_whole(world, client, engine, redis):
    text = "评" * 200
    assert comment(client, text).status_code == 201
    assert comments(engine) == [text]
    assert redis.zscore("count:art:comm", str(ARTICLE)) == 1


def test_a_comment_longer_than_the_column_is_400_naming_the_limit(world, client, engine, redis):
    assert_refused(comment(client, "x" * 201), 400, "200 characters", "201")
    assert comments(engine) == []
    assert redis.dbsize() == 0


def test_a_body_over_max_content_length_is_413_before_anything_is_stored(world, config, engine, redis):
    config.MAX_CONTENT_LENGTH = "2048"
    client = create_app(config).test_client()
    assert_refused(comment(client, "x" * 100, padding="p" * 2048), 413, "2048 bytes", "MAX_CONTENT_LENGTH")
    assert comment(client, "x" * 100, padding="p" * 1800).status_code == 201
    assert comments(engine) == ["x" * 100]


def test_the_default_body_limit_is_16_kib(world, client, engine):
    assert_refused(comment(client, "x", padding="p" * 16384), 413, "16384 bytes")
    assert comments(engine) == []


@pytest.mark.parametrize("value", ["1023", "0", "-1", "16777217", "lots", "inf"])
def test_a_bad_max_content_length_refuses_to_serve_and_logs_the_setting(world, config, caplog, value):
    config.MAX_CONTENT_LENGTH = value
    response = comment(create_app(config).test_client(), "hello")
    assert response.status_code == 500 and response.is_json
    assert "MAX_CONTENT_LENGTH" in caplog.text


OUT_OF_RANGE = [0, -1, MAX_ID + 1, 2**64 - 1, 2**64, 10**30]


@pytest.mark.parametrize("target", OUT_OF_RANGE)
@pytest.mark.parametrize("url", ["/v1_0/user/followings", "/v1_0/article/likings", "/v1_0/comment/likings"])
def test_a_json_id_out_of_range_is_400_naming_the_range(world, client, engine, redis, url, target):
    response = client.post(url, json={"target": target}, headers=as_user(client.application, A))
    assert_refused(response, 400, "'target'", str(MAX_ID))
    assert redis.dbsize() == 0


@pytest.mark.parametrize("art_id", [0, MAX_ID + 1, 2**64])
def test_a_reply_naming_an_article_id_out_of_range_is_400(world, client, engine, art_id):
    assert_refused(comment(client, "hi", art_id=art_id), 400, "'art_id'", str(MAX_ID))
    assert comments(engine) == []


@pytest.mark.parametrize(
    "target", ["0", "00", str(MAX_ID + 1), str(2**64 - 1), str(2**64), "9" * 30, "9" * 5000], ids=lambda t: t[:25]
)
@pytest.mark.parametrize(
    "method, url",
    [
        ("DELETE", "/v1_0/user/followings/{}"),
        ("DELETE", "/v1_0/user/blacklists/{}"),
        ("DELETE", "/v1_0/article/collections/{}"),
        ("DELETE", "/v1_0/article/likings/{}"),
        ("DELETE", "/v1_0/article/dislikes/{}"),
        ("DELETE", "/v1_0/comment/likings/{}"),
        ("GET", "/v1_0/users/{}/counts"),
        ("GET", "/v1_0/articles/{}/counts"),
        ("GET", "/v1_0/articles/counts?ids=1,{}"),
    ],
)
def test_a_path_or_query_id_out_of_range_is_400(world, client, method, url, target):
    response = client.open(url.format(target), method=method, headers=as_user(client.application, A))
    assert_refused(response, 400, str(MAX_ID))


@pytest.mark.parametrize(
    "method, url",
    [
        ("DELETE", f"/v1_0/article/likings/{MAX_ID}"),
        ("GET", f"/v1_0/users/{MAX_ID}/counts"),
        ("GET", f"/v1_0/articles/{MAX_ID}/counts"),
    ],
)
def test_the_largest_id_reaches_sql_and_finds_nothing(world, client, method, url):
    response = client.open(url, method=method, headers=as_user(client.application, A))
    assert_refused(response, 404, str(MAX_ID))


def test_a_follow_of_the_largest_id_is_a_404_from_the_database(world, client, engine):
    response = client.post("/v1_0/user/followings", json={"target": MAX_ID}, headers=as_user(client.application, A))
    assert_refused(response, 404, str(MAX_ID))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(User)).scalar() == 3
