"""Users: follow, unfollow, blacklist; a user's counts."""

from flask import Blueprint, g

from common.cache.statistic import (
    UserArticleCollectingCount,
    UserArticlesCount,
    UserFollowersCount,
    UserFollowingsCount,
    UserLikedCount,
)
from common.models import Relation, User
from toutiao.extensions import database, redis_client
from toutiao.resources.auth import login_required
from toutiao.resources.errors import BadRequest, NotFound
from toutiao.resources.payload import body, id_field, ok
from toutiao.resources.transition import commit_then_count, deltas, set_state

bp = Blueprint("user", __name__, url_prefix="/v1_0")

FOLLOW, BLACKLIST, NONE = Relation.RELATION.FOLLOW, Relation.RELATION.BLACKLIST, Relation.RELATION.DELETE

#: The counts shown for a user, by response field.
COUNTS = {
    "articles": UserArticlesCount,
    "followings": UserFollowingsCount,
    "followers": UserFollowersCount,
    "collections": UserArticleCollectingCount,
    "liked": UserLikedCount,
}


def set_relation(session, redis, user_id: int, target: int, new: int, refuse: dict):
    """Make ``user_id``'s relation to ``target`` ``new``, then move the follow counters.

    ``refuse`` maps an old relation to the message refusing the change from it.
    """
    if target == user_id:
        raise BadRequest("a user cannot follow or blacklist themselves")

    def change(session):
        if session.get(User, target) is None:
            raise NotFound(f"no user {target}")
        key = {"user_id": user_id, "target_user_id": target}
        old = set_state(session, Relation, key, "relation", new, refuse, absent=NONE)
        followed = (new == FOLLOW) - (old == FOLLOW)
        return deltas((UserFollowingsCount, user_id, followed), (UserFollowersCount, target, followed))

    commit_then_count(session, redis, change)


@bp.post("/user/followings")
@login_required
def follow():
    """Follow a user (a blacklisted one too: following replaces the blacklisting)."""
    target = id_field(body())
    refuse = {FOLLOW: f"already following user {target}"}
    set_relation(database.session, redis_client.client, g.user_id, target, FOLLOW, refuse)
    return ok({"target": target}, 201)


@bp.delete("/user/followings/<id:target>")
@login_required
def unfollow(target):
    refuse = {NONE: f"not following user {target}", BLACKLIST: f"not following user {target}"}
    set_relation(database.session, redis_client.client, g.user_id, target, NONE, refuse)
    return ok(status=204)


@bp.post("/user/blacklists")
@login_required
def blacklist():
    """Blacklist a user; a followed user is unfollowed."""
    target = id_field(body())
    refuse = {BLACKLIST: f"user {target} is already blacklisted"}
    set_relation(database.session, redis_client.client, g.user_id, target, BLACKLIST, refuse)
    return ok({"target": target}, 201)


@bp.delete("/user/blacklists/<id:target>")
@login_required
def unblacklist(target):
    refuse = {NONE: f"user {target} is not blacklisted", FOLLOW: f"user {target} is not blacklisted"}
    set_relation(database.session, redis_client.client, g.user_id, target, NONE, refuse)
    return ok(status=204)


@bp.get("/users/<id:user_id>/counts")
def user_counts(user_id):
    if database.session.get(User, user_id) is None:
        raise NotFound(f"no user {user_id}")
    redis = redis_client.client
    return ok({name: counter.get(redis, user_id) for name, counter in COUNTS.items()})
