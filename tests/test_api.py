"""The JSON API's write path: each request moves exactly its counters, after the commit,
and a refused request moves none."""

import threading

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from common.models import Article, Comment, Relation, User
from tests.expected import KEYS, actual, expected, wrong_members
from tests.tokens import as_user
from toutiao import create_app

A, B, AUTHOR, CLOSED_AUTHOR, DISABLED = 1, 2, 3, 4, 5
ARTICLE, CLOSED_ARTICLE, DRAFT = 10, 11, 12
COMMENT, UNAPPROVED_COMMENT, OTHER_ARTICLE_COMMENT = 100, 101, 102


@pytest.fixture
def world(engine, redis):
    """A few users, articles and comments, with every counter equal to the database."""
    with Session(engine) as conn, conn.begin():
        conn.execute(
            insert(User),
            [
                {"id": i, "mobile": f"1380000000{i}", "name": f"user{i}", "status": int(i != DISABLED)}
                for i in (A, B, AUTHOR, CLOSED_AUTHOR, DISABLED)
            ],
        )
        conn.execute(
            insert(Article),
            [
                {"id": ARTICLE, "user_id": AUTHOR, "channel_id": 1, "title": "open", "status": 2},
                {
                    "id": CLOSED_ARTICLE,
                    "user_id": CLOSED_AUTHOR,
                    "channel_id": 1,
                    "title": "closed",
                    "status": 2,
                    "allow_comment": False,
                },
                {"id": DRAFT, "user_id": AUTHOR, "channel_id": 1, "title": "draft", "status": 0},
            ],
        )
        conn.execute(
            insert(Comment),
            [
                {"id": COMMENT, "user_id": B, "article_id": ARTICLE, "content": "first", "status": 1},
                {"id": UNAPPROVED_COMMENT, "user_id": B, "article_id": ARTICLE, "content": "spam", "status": 0},
                {"id": OTHER_ARTICLE_COMMENT, "user_id": B, "article_id": CLOSED_ARTICLE, "content": "x", "status": 1},
            ],
        )
    for key in KEYS:
        if want := expected(engine, key):
            redis.zadd(key, want)
    assert wrong_members(engine, redis) == {}


def send(client, step, user=A):
    method, url, body = step
    headers = {} if user is None else as_user(client.application, user)
    return client.open(url, method=method, json=body, headers=headers)


def snapshot(redis):
    return {key: actual(redis, key) for key in KEYS}


def changes(before, after):
    """Return {key: {member: change}} for every score that moved."""
    moved = {}
    for key in KEYS:
        old, new = before[key], after[key]
        diff = {m: new.get(m, 0) - old.get(m, 0) for m in set(old) | set(new) if new.get(m, 0) != old.get(m, 0)}
        if diff:
            moved[key] = diff
    return moved


def follow(target=B):
    return "POST", "/v1_0/user/followings", {"target": target}


def unfollow(target=B):
    return "DELETE", f"/v1_0/user/followings/{target}", None


def blacklist(target=B):
    return "POST", "/v1_0/user/blacklists", {"target": target}


def unblacklist(target=B):
    return "DELETE", f"/v1_0/user/blacklists/{target}", None


def collect(target=ARTICLE):
    return "POST", "/v1_0/article/collections", {"target": target}


def uncollect(target=ARTICLE):
    return "DELETE", f"/v1_0/article/collections/{target}", None


def like(target=ARTICLE):
    return "POST", "/v1_0/article/likings", {"target": target}


def cancel_like(target=ARTICLE):
    return "DELETE", f"/v1_0/article/likings/{target}", None


def dislike(target=ARTICLE):
    return "POST", "/v1_0/article/dislikes", {"target": target}


def cancel_dislike(target=ARTICLE):
    return "DELETE", f"/v1_0/article/dislikes/{target}", None


def comment(target=ARTICLE, content="well said", art_id=None):
    body = {"target": target, "content": content} | ({"art_id": art_id} if art_id is not None else {})
    return "POST", "/v1_0/comments", body


def like_comment(target=COMMENT):
    return "POST", "/v1_0/comment/likings", {"target": target}


def unlike_comment(target=COMMENT):
    return "DELETE", f"/v1_0/comment/likings/{target}", None


FOLLOWS = {"count:user:followings": {"1": 1}, "count:user:followers": {"2": 1}}
UNFOLLOWS = {"count:user:followings": {"1": -1}, "count:user:followers": {"2": -1}}
COLLECTS = {"count:art:collecting": {"10": 1}, "count:user:art:collecting": {"1": 1}}
UNCOLLECTS = {"count:art:collecting": {"10": -1}, "count:user:art:collecting": {"1": -1}}
LIKES = {"count:art:liking": {"10": 1}, "count:user:liked": {"3": 1}}
UNLIKES = {"count:art:liking": {"10": -1}, "count:user:liked": {"3": -1}}

# name: (earlier steps, the step, its status, the counters it moves)
MOVES = {
    "follow": ([], follow(), 201, FOLLOWS),
    "unfollow": ([follow()], unfollow(), 204, UNFOLLOWS),
    "follow again after unfollowing": ([follow(), unfollow()], follow(), 201, FOLLOWS),
    "blacklist a stranger": ([], blacklist(), 201, {}),
    "blacklist a followed user unfollows": ([follow()], blacklist(), 201, UNFOLLOWS),
    "follow a blacklisted user": ([blacklist()], follow(), 201, FOLLOWS),
    "unblacklist": ([blacklist()], unblacklist(), 204, {}),
    "collect": ([], collect(), 201, COLLECTS),
    "uncollect": ([collect()], uncollect(), 204, UNCOLLECTS),
    "collect again after uncollecting": ([collect(), uncollect()], collect(), 201, COLLECTS),
    "like": ([], like(), 201, LIKES),
    "cancel a like": ([like()], cancel_like(), 204, UNLIKES),
    "dislike": ([], dislike(), 201, {"count:art:dislike": {"10": 1}}),
    "cancel a dislike": ([dislike()], cancel_dislike(), 204, {"count:art:dislike": {"10": -1}}),
    "like a disliked article": ([dislike()], like(), 201, LIKES | {"count:art:dislike": {"10": -1}}),
    "dislike a liked article": ([like()], dislike(), 201, UNLIKES | {"count:art:dislike": {"10": 1}}),
    "like again after cancelling": ([like(), cancel_like()], like(), 201, LIKES),
    "comment": ([], comment(), 201, {"count:art:comm": {"10": 1}}),
    "reply": ([], comment(COMMENT, art_id=ARTICLE), 201, {"count:art:comm": {"10": 1}, "count:art:reply": {"100": 1}}),
    "like a comment": ([], like_comment(), 201, {"count:comm:liking": {"100": 1}}),
    "unlike a comment": ([like_comment()], unlike_comment(), 204, {"count:comm:liking": {"100": -1}}),
    "like a comment again": (
        [like_comment(), unlike_comment()],
        like_comment(),
        201,
        {"count:comm:liking": {"100": 1}},
    ),
}


def cases(table):
    """Return a table's rows as pytest params named by their keys."""
    return [pytest.param(*case, id=name) for name, case in table.items()]


@pytest.mark.parametrize("earlier, step, status, moved", cases(MOVES))
def test_a_request_moves_exactly_its_counters(world, client, engine, redis, earlier, step, status, moved):
    for prior in earlier:
        assert send(client, prior).status_code in (201, 204)
    before = snapshot(redis)
    response = send(client, step)
    assert response.status_code == status, response.get_json()
    assert changes(before, snapshot(redis)) == moved
    assert wrong_members(engine, redis) == {}


# name: (earlier steps, the step, the user sending it, its status)
REFUSALS = {
    "no token": ([], follow(), None, 401),
    "a token naming no user": ([], follow(), 999, 401),
    "a disabled user": ([], follow(), DISABLED, 403),
    "no JSON body": ([], ("POST", "/v1_0/user/followings", None), A, 400),
    "a JSON body that is not an object": ([], ("POST", "/v1_0/user/followings", [B]), A, 400),
    "no target": ([], ("POST", "/v1_0/article/likings", {}), A, 400),
    "a target that is not an integer": ([], ("POST", "/v1_0/article/likings", {"target": "10"}), A, 400),
    "a negative target": ([], like(-1), A, 400),
    "a boolean target": ([], like(True), A, 400),
    "follow yourself": ([], follow(A), A, 400),
    "blacklist yourself": ([], blacklist(A), A, 400),
    "follow an unknown user": ([], follow(999), A, 404),
    "follow twice": ([follow()], follow(), A, 409),
    "unfollow a user not followed": ([], unfollow(), A, 409),
    "unfollow a blacklisted user": ([blacklist()], unfollow(), A, 409),
    "unfollow an unknown user": ([], unfollow(999), A, 404),
    "blacklist twice": ([blacklist()], blacklist(), A, 409),
    "unblacklist a followed user": ([follow()], unblacklist(), A, 409),
    "collect an unknown article": ([], collect(999), A, 404),
    "collect a draft": ([], collect(DRAFT), A, 404),
    "collect twice": ([collect()], collect(), A, 409),
    "uncollect an article not collected": ([], uncollect(), A, 409),
    "uncollect twice": ([collect(), uncollect()], uncollect(), A, 409),
    "like an unknown article": ([], like(999), A, 404),
    "like twice": ([like()], like(), A, 409),
    "dislike twice": ([dislike()], dislike(), A, 409),
    "cancel a like never given": ([], cancel_like(), A, 409),
    "cancel a like of a disliked article": ([dislike()], cancel_like(), A, 409),
    "cancel a dislike of a liked article": ([like()], cancel_dislike(), A, 409),
    "comment without content": ([], comment(content="  "), A, 400),
    "comment on an unknown article": ([], comment(999), A, 404),
    "comment on a draft": ([], comment(DRAFT), A, 404),
    "comment where comments are closed": ([], comment(CLOSED_ARTICLE), A, 403),
    "reply to an unknown comment": ([], comment(999, art_id=ARTICLE), A, 404),
    "reply to an unapproved comment": ([], comment(UNAPPROVED_COMMENT, art_id=ARTICLE), A, 404),
    "reply naming another article": ([], comment(OTHER_ARTICLE_COMMENT, art_id=ARTICLE), A, 404),
    "like an unknown comment": ([], like_comment(999), A, 404),
    "like an unapproved comment": ([], like_comment(UNAPPROVED_COMMENT), A, 404),
    "like a comment twice": ([like_comment()], like_comment(), A, 409),
    "unlike a comment not liked": ([], unlike_comment(), A, 409),
}


@pytest.mark.parametrize("earlier, step, user, status", cases(REFUSALS))
def test_a_refused_request_answers_json_and_moves_nothing(world, client, engine, redis, earlier, step, user, status):
    for prior in earlier:
        assert send(client, prior).status_code in (201, 204)
    before = snapshot(redis)
    response = send(client, step, user=user)
    assert response.status_code == status
    assert response.is_json and response.get_json()["message"]
    assert snapshot(redis) == before
    assert wrong_members(engine, redis) == {}


def test_blacklisting_a_followed_user_stores_the_blacklist(world, client, engine):
    send(client, follow())
    send(client, blacklist())
    with engine.connect() as conn:
        relation = conn.execute(select(Relation.relation).where(Relation.user_id == A, Relation.target_user_id == B))
        assert relation.scalar_one() == Relation.RELATION.BLACKLIST


def test_a_reply_is_stored_approved_under_its_comment(world, client, engine):
    response = send(client, comment(COMMENT, content="me too", art_id=ARTICLE))
    data = response.get_json()["data"]
    assert data["target"] == COMMENT and data["art_id"] == ARTICLE
    with engine.connect() as conn:
        row = conn.execute(select(Comment).where(Comment.id == data["com_id"])).one()
    assert (row.article_id, row.parent_id, row.user_id, row.content, row.status) == (ARTICLE, COMMENT, A, "me too", 1)


def test_duplicate_requests_at_once_count_once(app, world, engine, redis):
    """Eight identical likes race on one row; the row lock lets exactly one through."""
    statuses = _at_once(app, [(A, like())] * 8)
    assert sorted(statuses) == [201] + [409] * 7
    assert redis.zscore("count:art:liking", str(ARTICLE)) == 1
    assert wrong_members(engine, redis) == {}


def test_many_users_following_one_user_at_once_all_count(app, world, engine, redis):
    fans = range(20, 32)
    with Session(engine) as conn, conn.begin():
        conn.execute(insert(User), [{"id": i, "mobile": f"139000000{i}", "name": f"fan{i}"} for i in fans])
    statuses = _at_once(app, [(fan, follow(AUTHOR)) for fan in fans])
    assert statuses == [201] * len(fans)
    assert redis.zscore("count:user:followers", str(AUTHOR)) == len(fans)
    assert wrong_members(engine, redis) == {}


def _at_once(app, requests):
    """Send (user, step) requests from one thread each, released together; return the statuses."""
    start = threading.Barrier(len(requests))
    statuses = [None] * len(requests)

    def run(i, user, step):
        client = app.test_client()
        start.wait()
        statuses[i] = send(client, step, user=user).status_code

    threads = [threading.Thread(target=run, args=(i, *request)) for i, request in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_user_counts_read_the_counters(world, client, redis):
    send(client, follow(AUTHOR))
    send(client, like())
    send(client, collect(), user=AUTHOR)
    response = client.get(f"/v1_0/users/{AUTHOR}/counts")
    assert response.status_code == 200
    assert response.get_json()["data"] == {"articles": 1, "followings": 0, "followers": 1, "collections": 1, "liked": 1}


def test_article_counts_read_the_counters(world, client):
    send(client, like())
    send(client, collect())
    send(client, comment())
    send(client, dislike(), user=B)
    response = client.get(f"/v1_0/articles/{ARTICLE}/counts")
    assert response.status_code == 200
    assert response.get_json()["data"] == {"likes": 1, "dislikes": 1, "collections": 1, "comments": 2}


def test_counts_of_several_articles_in_one_request(world, client):
    send(client, like())
    send(client, dislike(CLOSED_ARTICLE))
    response = client.get(f"/v1_0/articles/counts?ids={ARTICLE},{CLOSED_ARTICLE},999")
    assert response.status_code == 200
    assert response.get_json()["data"] == [
        {"art_id": ARTICLE, "likes": 1, "dislikes": 0, "collections": 0, "comments": 1},
        {"art_id": CLOSED_ARTICLE, "likes": 0, "dislikes": 1, "collections": 0, "comments": 1},
        {"art_id": 999, "likes": 0, "dislikes": 0, "collections": 0, "comments": 0},
    ]


@pytest.mark.parametrize(
    "url, status",
    [
        ("/v1_0/users/999/counts", 404),
        ("/v1_0/articles/999/counts", 404),
        (f"/v1_0/articles/{DRAFT}/counts", 404),
        ("/v1_0/articles/counts", 400),
        ("/v1_0/articles/counts?ids=1,x", 400),
        ("/v1_0/articles/counts?ids=" + ",".join(["1"] * 101), 400),
        ("/v1_0/no/such/route", 404),
    ],
)
def test_bad_reads_answer_json_errors(world, client, url, status):
    response = client.get(url)
    assert response.status_code == status
    assert response.is_json and response.get_json()["message"]


def test_a_wrong_method_answers_json(world, client):
    response = client.get("/v1_0/user/followings")
    assert response.status_code == 405
    assert response.get_json()["message"]


def test_healthz_answers_without_touching_dependencies(config):
    config.DATABASE_URL = "mysql+pymysql://root@127.0.0.1:1/nowhere"
    config.REDIS_URL = "redis://127.0.0.1:1/0"
    client = create_app(config).test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_is_200_with_both_servers_and_503_naming_the_missing_one(client, config):
    assert client.get("/readyz").status_code == 200
    config.REDIS_URL = "redis://127.0.0.1:1/0"
    response = create_app(config).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["failing"] == ["redis"]
