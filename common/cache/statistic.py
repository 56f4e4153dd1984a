"""The statistic counters: Redis sorted sets whose member is an id and whose score is a count.

Each counter is one small class declaring its Redis key and the query that computes
it from MySQL, the source of truth. The query selects ``(member id, count)`` grouped by
the member; the repair engine adds ordering, id filters and sharding to it. A member
whose count is 0 is absent from the set.

The app bumps counters through :mod:`common.cache.writes` (announce, commit, apply) and
reads them with :meth:`Statistic.get` and :meth:`Statistic.get_many`.
"""

from __future__ import annotations

from typing import ClassVar, Iterable

from sqlalchemy import Integer, Select, cast, func, select

from common.models import Article, Attitude, Collection, Comment, CommentLiking, Relation, User


def mysql_hint(stmt: Select, table, hint: str) -> Select:
    """``stmt`` with an index hint on ``table`` for MySQL and MariaDB (other databases ignore it)."""
    for dialect in ("mysql", "mariadb"):
        stmt = stmt.with_hint(table, hint, dialect_name=dialect)
    return stmt


class Statistic:
    """Base of every counter: a sorted set at ``key`` computed by ``query``."""

    key: ClassVar[str]
    query: ClassVar[Select]
    #: (table, columns) of an optional index that makes the query an index-only scan;
    #: documented by ``flask stats explain``, never created by this code.
    covering_index: ClassVar[tuple] = ()
    #: The model whose table the full stream should read with a table scan (MySQL
    #: ``USE INDEX ()``) while the covering index is absent. Without it MariaDB walks the
    #: member's index and fetches every row by primary key in random order: 7-40x
    #: slower than a scan and a sort at a million users (bench/PLANS.md).
    stream_scan: ClassVar[object] = None
    #: The model whose primary key the members are (user, article or comment ids): its
    #: id range tells how to cut a packed stream into buckets of about a batch.
    members_of: ClassVar[object] = None
    registry: ClassVar[dict[str, type["Statistic"]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Statistic.registry[cls.key] = cls

    @classmethod
    def member_column(cls):
        """Return the column whose values are the set's members."""
        return cls.query.selected_columns[0]

    @classmethod
    def stream_query(cls, covering_index_exists: bool = False) -> Select:
        """Return the query as the repair streams it: in member order, scanning when that is cheaper."""
        stmt = cls.query.order_by(cls.member_column())
        return stmt if covering_index_exists else cls.scanning(stmt)

    @classmethod
    def scanning(cls, stmt: Select) -> Select:
        """``stmt`` asking MySQL/MariaDB to scan ``stream_scan``'s table (``USE INDEX ()``)."""
        return stmt if cls.stream_scan is None else mysql_hint(stmt, cls.stream_scan, "USE INDEX ()")

    @classmethod
    def describe(cls) -> str:
        """Return the first line of the class docstring: what the counter counts."""
        return (cls.__doc__ or "").strip().splitlines()[0]

    @classmethod
    def get(cls, redis, member_id) -> int:
        """Return the count of one id, 0 when absent."""
        score = redis.zscore(cls.key, str(member_id))
        return int(score) if score is not None else 0

    @classmethod
    def get_many(cls, redis, member_ids: Iterable) -> list[int]:
        """Return the counts of several ids in one ZMSCORE, 0 for the absent ones."""
        ids = [str(i) for i in member_ids]
        if not ids:
            return []
        return [int(s) if s is not None else 0 for s in redis.zmscore(cls.key, ids)]

    @classmethod
    def incr(cls, redis, member_id, increment: int = 1) -> str:
        """Add ``increment`` to the count of one id, unannounced; call only after the commit.

        The app's write path announces its increments before committing instead
        (:mod:`common.cache.writes`); this is for scripts and one-off fixes. A count that
        reaches 0 leaves the set. Returns the outcome (see :func:`common.cache.writes.apply`).
        """
        from common.cache import writes

        return writes.apply(redis, writes.unannounced(writes.deltas((cls, member_id, increment))))[0]


class UserArticlesCount(Statistic):
    """Articles a user has published (status approved), by author."""

    key = "count:user:arts"
    members_of = User
    covering_index = ("news_article_basic", ("status", "user_id"))
    stream_scan = Article
    query = (
        select(Article.user_id, func.count()).where(Article.status == Article.STATUS.APPROVED).group_by(Article.user_id)
    )


class UserFollowingsCount(Statistic):
    """Users a user follows, by follower."""

    key = "count:user:followings"
    members_of = User
    covering_index = ("user_relation", ("relation", "user_id"))
    stream_scan = Relation
    query = (
        select(Relation.user_id, func.count())
        .where(Relation.relation == Relation.RELATION.FOLLOW)
        .group_by(Relation.user_id)
    )


class UserFollowersCount(Statistic):
    """Followers a user has, by followed user."""

    key = "count:user:followers"
    members_of = User
    covering_index = ("user_relation", ("relation", "target_user_id"))
    stream_scan = Relation
    query = (
        select(Relation.target_user_id, func.count())
        .where(Relation.relation == Relation.RELATION.FOLLOW)
        .group_by(Relation.target_user_id)
    )


class ArticleCollectingCount(Statistic):
    """Active collections of an article, by article."""

    key = "count:art:collecting"
    members_of = Article
    covering_index = ("news_collection", ("is_deleted", "article_id"))
    query = (
        select(Collection.article_id, func.count()).where(Collection.is_deleted == 0).group_by(Collection.article_id)
    )


class UserArticleCollectingCount(Statistic):
    """Articles a user keeps in active collections, by user."""

    key = "count:user:art:collecting"
    members_of = User
    covering_index = ("news_collection", ("is_deleted", "user_id"))
    stream_scan = Collection
    query = select(Collection.user_id, func.count()).where(Collection.is_deleted == 0).group_by(Collection.user_id)


class ArticleLikingCount(Statistic):
    """Likes of an article (attitude 1), by article."""

    key = "count:art:liking"
    members_of = Article
    covering_index = ("news_attitude", ("attitude", "article_id"))
    query = (
        select(Attitude.article_id, func.count())
        .where(Attitude.attitude == Attitude.ATTITUDE.LIKING)
        .group_by(Attitude.article_id)
    )


class ArticleDislikeCount(Statistic):
    """Dislikes of an article (attitude 0; NULL is no attitude), by article."""

    key = "count:art:dislike"
    members_of = Article
    covering_index = ("news_attitude", ("attitude", "article_id"))
    query = (
        select(Attitude.article_id, func.count())
        .where(Attitude.attitude == Attitude.ATTITUDE.DISLIKE)
        .group_by(Attitude.article_id)
    )


class UserLikedCount(Statistic):
    """Likes received on a user's articles (attitude 1), by author."""

    key = "count:user:liked"
    members_of = User
    covering_index = ("news_attitude", ("attitude", "article_id"))
    # Likes are counted per article first, so the join looks articles up in article
    # order (sequential pages) instead of once per like in random order: 51 s -> 6 s
    # at a million users (bench/PLANS.md).
    _likes = (
        select(Attitude.article_id, func.count().label("likes"))
        .where(Attitude.attitude == Attitude.ATTITUDE.LIKING)
        .group_by(Attitude.article_id)
        .subquery("likes")
    )
    query = (
        select(Article.user_id, cast(func.sum(_likes.c.likes), Integer))
        .join_from(_likes, Article, Article.id == _likes.c.article_id)
        .group_by(Article.user_id)
    )


class CommentLikingCount(Statistic):
    """Active likes of a comment, by comment."""

    key = "count:comm:liking"
    members_of = Comment
    covering_index = ("news_comment_liking", ("is_deleted", "comment_id"))
    query = (
        select(CommentLiking.comment_id, func.count())
        .where(CommentLiking.is_deleted == 0)
        .group_by(CommentLiking.comment_id)
    )


class ArticleCommentCount(Statistic):
    """Approved comments on an article, replies included, by article."""

    key = "count:art:comm"
    members_of = Article
    covering_index = ("news_comment", ("status", "article_id"))
    stream_scan = Comment
    query = (
        select(Comment.article_id, func.count())
        .where(Comment.status == Comment.STATUS.APPROVED)
        .group_by(Comment.article_id)
    )


class CommentReplyCount(Statistic):
    """Approved replies to a comment, by the comment replied to."""

    key = "count:art:reply"
    members_of = Comment
    covering_index = ("news_comment", ("status", "parent_id"))
    stream_scan = Comment
    query = (
        select(Comment.parent_id, func.count())
        .where(Comment.status == Comment.STATUS.APPROVED, Comment.parent_id.is_not(None))
        .group_by(Comment.parent_id)
    )


COUNTERS: tuple[type[Statistic], ...] = tuple(Statistic.registry.values())


def select_counters(keys: Iterable[str] = ()) -> list[type[Statistic]]:
    """Return the counters named by their Redis keys, all of them when none are given.

    Raises :class:`common.exceptions.UnknownCounter` for a key that is not a counter.
    """
    from common.exceptions import UnknownCounter

    keys = list(dict.fromkeys(keys))
    if not keys:
        return list(COUNTERS)
    unknown = [k for k in keys if k not in Statistic.registry]
    if unknown:
        raise UnknownCounter(unknown[0], sorted(Statistic.registry))
    return [Statistic.registry[k] for k in keys]
