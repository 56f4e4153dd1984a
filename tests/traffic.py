"""Traffic through the app's own write path: threads sending random follows, blacklists,
collections, likes, dislikes, comments and comment likes to the Flask app, as users do."""

import random
import threading
import time

from sqlalchemy import select

from common.models import Article, Comment, User
from tests.tokens import as_user

#: Writer threads a Traffic starts.
WRITERS = 4


class Traffic:
    """Writer threads sending random follows, likes, collects, comments... through the API."""

    def __init__(self, app, engine, seed, writers=WRITERS):
        self.app = app
        self.seed = seed
        self.users, self.articles, self.comments = self.population(engine)
        self.writers = writers
        self.stop = threading.Event()
        self.sent = 0
        self.unexpected = []
        self._lock = threading.Lock()
        self._threads = []

    def population(self, engine) -> tuple[list, list, list]:
        """Return the enabled users, approved articles and (comment, article) pairs of approved
        comments on approved articles that the writers pick from: all of them."""
        approved = Article.status == Article.STATUS.APPROVED
        with engine.connect() as conn:
            users = conn.execute(select(User.id).where(User.status == User.STATUS.ENABLE)).scalars().all()
            articles = conn.execute(select(Article.id).where(approved)).scalars().all()
            comments = conn.execute(
                select(Comment.id, Comment.article_id)
                .join(Article, Article.id == Comment.article_id)
                .where(Comment.status == Comment.STATUS.APPROVED, approved)
            ).all()
        return users, articles, comments

    def start(self):
        for i in range(self.writers):
            thread = threading.Thread(target=self._write, args=(random.Random(f"{self.seed}-{i}"),), daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_for(self, requests, timeout=10):
        deadline = time.monotonic() + timeout
        while self.sent < requests and time.monotonic() < deadline:
            time.sleep(0.01)

    def finish(self):
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in self._threads), "a writer is stuck"

    def _write(self, rng):
        client = self.app.test_client()
        headers = {user: as_user(self.app, user) for user in self.users}
        while not self.stop.is_set():
            user = rng.choice(self.users)
            for method, url, body, allowed in self._action(rng, user):
                response = client.open(url, method=method, json=body, headers=headers[user])
                with self._lock:
                    self.sent += 1
                    if response.status_code not in allowed:
                        self.unexpected.append((method, url, body, response.status_code, response.get_data(True)))
                if response.status_code != 409:
                    break

    def _action(self, rng, user):
        """Return requests to try in turn until one is not refused as a duplicate (409)."""
        kind = rng.choice(["follow", "blacklist", "collect", "attitude", "attitude", "comment", "comment_like"])
        if kind in ("follow", "blacklist"):
            target = rng.choice([u for u in rng.sample(self.users, 2) if u != user])
            if kind == "follow":
                return [_post("/v1_0/user/followings", target), _delete(f"/v1_0/user/followings/{target}")]
            return [_post("/v1_0/user/blacklists", target), _delete(f"/v1_0/user/blacklists/{target}")]
        if kind == "collect":
            art = rng.choice(self.articles)
            return [_post("/v1_0/article/collections", art), _delete(f"/v1_0/article/collections/{art}")]
        if kind == "attitude":
            art = rng.choice(self.articles)
            steps = [
                _post("/v1_0/article/likings", art),
                _post("/v1_0/article/dislikes", art),
                _delete(f"/v1_0/article/likings/{art}"),
                _delete(f"/v1_0/article/dislikes/{art}"),
            ]
            rng.shuffle(steps)
            return steps
        if kind == "comment":
            if rng.random() < 0.5:
                return [("POST", "/v1_0/comments", {"target": rng.choice(self.articles), "content": "live"}, {201})]
            com, art = rng.choice(self.comments)
            return [("POST", "/v1_0/comments", {"target": com, "art_id": art, "content": "live reply"}, {201})]
        com, _ = rng.choice(self.comments)
        return [_post("/v1_0/comment/likings", com), _delete(f"/v1_0/comment/likings/{com}")]


def _post(url, target):
    return "POST", url, {"target": target}, {201, 409}


def _delete(url):
    return "DELETE", url, None, {204, 409}
