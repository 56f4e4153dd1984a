"""Articles and what users do to them: collect, like or dislike, comment."""

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
)

from common.models import ID, TINY, Base


class Article(Base):
    """A row of ``news_article_basic``."""

    __tablename__ = "news_article_basic"
    __table_args__ = (
        Index("user_id", "user_id"),
        Index("article_status", "status"),
    )

    class STATUS:
        DRAFT = 0
        UNREVIEWED = 1
        APPROVED = 2
        FAILED = 3
        DELETED = 4
        BANNED = 5

    id = Column("article_id", ID, primary_key=True, autoincrement=True)
    user_id = Column(ID, nullable=False)
    channel_id = Column(Integer, nullable=False)
    title = Column(String(130), nullable=False)
    cover = Column(JSON, nullable=True)
    is_advertising = Column(Boolean, nullable=False, default=False, server_default="0")
    ctime = Column("create_time", DateTime, nullable=False, default=datetime.now, server_default=func.now())
    status = Column(TINY, nullable=False, default=STATUS.DRAFT, server_default="0")
    reviewer_id = Column(Integer, nullable=True)
    review_time = Column(DateTime, nullable=True)
    delete_time = Column(DateTime, nullable=True)
    comment_count = Column(Integer, nullable=False, default=0, server_default="0")
    allow_comment = Column(Boolean, nullable=False, default=True, server_default="1")
    reject_reason = Column(String(200), nullable=True)
    utime = Column(
        "update_time", DateTime, nullable=False, default=datetime.now, onupdate=datetime.now, server_default=func.now()
    )


class Collection(Base):
    """A row of ``news_collection``: a user keeping an article."""

    __tablename__ = "news_collection"
    __table_args__ = (UniqueConstraint("user_id", "article_id", name="user_article"),)

    id = Column("collection_id", ID, primary_key=True, autoincrement=True)
    user_id = Column(ID, nullable=False)
    article_id = Column(ID, nullable=False)
    ctime = Column("create_time", DateTime, nullable=False, default=datetime.now, server_default=func.now())
    is_deleted = Column(TINY, nullable=False, default=0, server_default="0")
    utime = Column(
        "update_time", DateTime, nullable=False, default=datetime.now, onupdate=datetime.now, server_default=func.now()
    )


class Attitude(Base):
    """A row of ``news_attitude``: a user's like or dislike of an article."""

    __tablename__ = "news_attitude"
    __table_args__ = (UniqueConstraint("user_id", "article_id", name="user_article"),)

    class ATTITUDE:
        DISLIKE = 0
        LIKING = 1

    id = Column("attitude_id", ID, primary_key=True, autoincrement=True)
    user_id = Column(ID, nullable=False)
    article_id = Column(ID, nullable=False)
    attitude = Column(TINY, nullable=True)
    ctime = Column("create_time", DateTime, nullable=False, default=datetime.now, server_default=func.now())
    utime = Column(
        "update_time", DateTime, nullable=False, default=datetime.now, onupdate=datetime.now, server_default=func.now()
    )


class Comment(Base):
    """A row of ``news_comment``: a comment on an article, or a reply to one."""

    __tablename__ = "news_comment"
    __table_args__ = (
        Index("article_id", "article_id"),
        Index("parent_id", "parent_id"),
    )

    class STATUS:
        UNREVIEWED = 0
        APPROVED = 1
        FAILED = 2
        DELETED = 3

    id = Column("comment_id", ID, primary_key=True, autoincrement=True)
    user_id = Column(ID, nullable=False)
    article_id = Column(ID, nullable=False)
    parent_id = Column(ID, nullable=True)
    like_count = Column(Integer, nullable=False, default=0, server_default="0")
    reply_count = Column(Integer, nullable=False, default=0, server_default="0")
    content = Column(String(200), nullable=False)
    is_top = Column(Boolean, nullable=False, default=False, server_default="0")
    status = Column(TINY, nullable=False, default=STATUS.UNREVIEWED, server_default="0")
    ctime = Column("create_time", DateTime, nullable=False, default=datetime.now, server_default=func.now())


class CommentLiking(Base):
    """A row of ``news_comment_liking``: a user liking a comment."""

    __tablename__ = "news_comment_liking"
    __table_args__ = (UniqueConstraint("user_id", "comment_id", name="user_comment"),)

    id = Column("liking_id", ID, primary_key=True, autoincrement=True)
    user_id = Column(ID, nullable=False)
    comment_id = Column(ID, nullable=False)
    ctime = Column("create_time", DateTime, nullable=False, default=datetime.now, server_default=func.now())
    is_deleted = Column(TINY, nullable=False, default=0, server_default="0")
    utime = Column(
        "update_time", DateTime, nullable=False, default=datetime.now, onupdate=datetime.now, server_default=func.now()
    )
