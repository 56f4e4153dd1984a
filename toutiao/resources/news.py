"""Articles and comments: collect, like or dislike, comment and reply, like a comment;
an article's counts."""

import re

from flask import Blueprint, g, request

from common.cache.statistic import (
    ArticleCollectingCount,
    ArticleCommentCount,
    ArticleDislikeCount,
    ArticleLikingCount,
    CommentLikingCount,
    CommentReplyCount,
    UserArticleCollectingCount,
    UserLikedCount,
)
from common.models import Article, Attitude, Collection, Comment, CommentLiking
from toutiao.extensions import database, redis_client
from toutiao.resources.auth import login_required
from toutiao.resources.errors import BadRequest, Forbidden, NotFound
from toutiao.resources.payload import MAX_ID, body, id_field, ok, text_field, valid_id
from toutiao.resources.transition import commit_then_count, deltas, set_state

bp = Blueprint("news", __name__, url_prefix="/v1_0")

LIKING, DISLIKE = Attitude.ATTITUDE.LIKING, Attitude.ATTITUDE.DISLIKE
KEPT, DELETED = 0, 1  # is_deleted of a collection or a comment like

#: The counts shown for an article, by response field.
COUNTS = {
    "likes": ArticleLikingCount,
    "dislikes": ArticleDislikeCount,
    "collections": ArticleCollectingCount,
    "comments": ArticleCommentCount,
}

#: Articles one counts request may ask for.
MAX_COUNTS_IDS = 100

#: Characters a comment may have: its column's length (VARCHAR(200) as in the original).
COMMENT_LENGTH = Comment.__table__.c.content.type.length

_ID = re.compile(r"^[1-9][0-9]{0,19}$")


def approved_article(session, article_id: int) -> Article:
    """Return the article if it exists and is approved (the only kind readers see)."""
    article = session.get(Article, article_id)
    if article is None or article.status != Article.STATUS.APPROVED:
        raise NotFound(f"no article {article_id}")
    return article


def approved_comment(session, comment_id: int) -> Comment:
    """Return the comment if it exists and is approved."""
    comment = session.get(Comment, comment_id)
    if comment is None or comment.status != Comment.STATUS.APPROVED:
        raise NotFound(f"no comment {comment_id}")
    return comment


def set_collection(session, redis, user_id: int, article_id: int, new: int, refuse: dict):
    """Collect (``KEPT``) or uncollect (``DELETED``) an article, then move its counters."""

    def change(session):
        approved_article(session, article_id)
        key = {"user_id": user_id, "article_id": article_id}
        old = set_state(session, Collection, key, "is_deleted", new, refuse, absent=DELETED)
        kept = (new == KEPT) - (old == KEPT)
        return deltas((ArticleCollectingCount, article_id, kept), (UserArticleCollectingCount, user_id, kept))

    commit_then_count(session, redis, change)


def set_attitude(session, redis, user_id: int, article_id: int, new, refuse: dict):
    """Like, dislike (``LIKING``, ``DISLIKE``) or cancel (None), then move the counters.

    Moving between like and dislike moves both article counters and the author's likes.
    """

    def change(session):
        author = approved_article(session, article_id).user_id
        key = {"user_id": user_id, "article_id": article_id}
        old = set_state(session, Attitude, key, "attitude", new, refuse, absent=None)
        liked = (new == LIKING) - (old == LIKING)
        disliked = (new == DISLIKE) - (old == DISLIKE)
        return deltas(
            (ArticleLikingCount, article_id, liked),
            (ArticleDislikeCount, article_id, disliked),
            (UserLikedCount, author, liked),
        )

    commit_then_count(session, redis, change)


def set_comment_liking(session, redis, user_id: int, comment_id: int, new: int, refuse: dict):
    """Like (``KEPT``) or unlike (``DELETED``) a comment, then move its counter."""

    def change(session):
        approved_comment(session, comment_id)
        key = {"user_id": user_id, "comment_id": comment_id}
        old = set_state(session, CommentLiking, key, "is_deleted", new, refuse, absent=DELETED)
        return deltas((CommentLikingCount, comment_id, (new == KEPT) - (old == KEPT)))

    commit_then_count(session, redis, change)


def add_comment(session, redis, user_id: int, article_id: int, content: str, parent_id=None) -> int:
    """Comment on an article, or reply to ``parent_id`` on it; return the new comment's id.

    New comments are approved at once (status 1) so that they are counted; the original
    app reviews them first.
    """
    created = None

    def change(session):
        nonlocal created
        article = approved_article(session, article_id)
        if not article.allow_comment:
            raise Forbidden(f"comments on article {article_id} are closed")
        if parent_id is not None and approved_comment(session, parent_id).article_id != article_id:
            raise NotFound(f"no comment {parent_id} on article {article_id}")
        comment = Comment(
            user_id=user_id, article_id=article_id, parent_id=parent_id, content=content, status=Comment.STATUS.APPROVED
        )
        session.add(comment)
        session.flush()
        created = comment.id
        return deltas((ArticleCommentCount, article_id, 1), (CommentReplyCount, parent_id, 1 if parent_id else 0))

    commit_then_count(session, redis, change)
    return created


def article_counts(redis, article_ids: list) -> list[dict]:
    """Return each article's counts, reading every counter once for all of them."""
    columns = {name: counter.get_many(redis, article_ids) for name, counter in COUNTS.items()}
    return [{name: values[i] for name, values in columns.items()} for i in range(len(article_ids))]


@bp.post("/article/collections")
@login_required
def collect():
    target = id_field(body())
    refuse = {KEPT: f"article {target} is already collected"}
    set_collection(database.session, redis_client.client, g.user_id, target, KEPT, refuse)
    return ok({"target": target}, 201)


@bp.delete("/article/collections/<id:target>")
@login_required
def uncollect(target):
    refuse = {DELETED: f"article {target} is not collected"}
    set_collection(database.session, redis_client.client, g.user_id, target, DELETED, refuse)
    return ok(status=204)


@bp.post("/article/likings")
@login_required
def like():
    """Like an article; a disliked one stops being disliked."""
    target = id_field(body())
    refuse = {LIKING: f"article {target} is already liked"}
    set_attitude(database.session, redis_client.client, g.user_id, target, LIKING, refuse)
    return ok({"target": target}, 201)


@bp.delete("/article/likings/<id:target>")
@login_required
def cancel_like(target):
    refuse = {None: f"article {target} is not liked", DISLIKE: f"article {target} is not liked"}
    set_attitude(database.session, redis_client.client, g.user_id, target, None, refuse)
    return ok(status=204)


@bp.post("/article/dislikes")
@login_required
def dislike():
    """Dislike an article; a liked one stops being liked."""
    target = id_field(body())
    refuse = {DISLIKE: f"article {target} is already disliked"}
    set_attitude(database.session, redis_client.client, g.user_id, target, DISLIKE, refuse)
    return ok({"target": target}, 201)


@bp.delete("/article/dislikes/<id:target>")
@login_required
def cancel_dislike(target):
    refuse = {None: f"article {target} is not disliked", LIKING: f"article {target} is not disliked"}
    set_attitude(database.session, redis_client.client, g.user_id, target, None, refuse)
    return ok(status=204)


@bp.post("/comments")
@login_required
def comment():
    """Comment on article ``target``, or, with ``art_id``, reply to comment ``target`` on it."""
    data = body()
    target, content = id_field(data), text_field(data, "content", COMMENT_LENGTH)
    if data.get("art_id") is None:
        article_id, parent_id = target, None
    else:
        article_id, parent_id = id_field(data, "art_id"), target
    com_id = add_comment(database.session, redis_client.client, g.user_id, article_id, content, parent_id)
    return ok({"com_id": com_id, "target": target, "art_id": article_id}, 201)


@bp.post("/comment/likings")
@login_required
def like_comment():
    target = id_field(body())
    refuse = {KEPT: f"comment {target} is already liked"}
    set_comment_liking(database.session, redis_client.client, g.user_id, target, KEPT, refuse)
    return ok({"target": target}, 201)


@bp.delete("/comment/likings/<id:target>")
@login_required
def unlike_comment(target):
    refuse = {DELETED: f"comment {target} is not liked"}
    set_comment_liking(database.session, redis_client.client, g.user_id, target, DELETED, refuse)
    return ok(status=204)


@bp.get("/articles/<id:article_id>/counts")
def one_article_counts(article_id):
    approved_article(database.session, article_id)
    return ok(article_counts(redis_client.client, [article_id])[0])


@bp.get("/articles/counts")
def many_article_counts():
    """The counts of ``?ids=1,2,3`` (a feed page) in one read per counter; unknown ids count 0."""
    raw = [part.strip() for part in request.args.get("ids", "").split(",")]
    ids = [int(part) if _ID.match(part) else 0 for part in raw]
    if not 0 < len(ids) <= MAX_COUNTS_IDS or not all(valid_id(i) for i in ids):
        raise BadRequest(f"'ids' must be 1 to {MAX_COUNTS_IDS} comma-separated article ids from 1 to {MAX_ID}")
    return ok([{"art_id": i} | counts for i, counts in zip(ids, article_counts(redis_client.client, ids))])
