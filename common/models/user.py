"""Users and the relations between them (follow, blacklist)."""

from datetime import datetime

from sqlalchemy import (
    CHAR,
    Boolean,
    Column,
    DateTime,
    Integer,
    String,
    UniqueConstraint,
    func,
)

from common.models import ID, TINY, Base


class User(Base):
    """A row of ``user_basic``."""

    __tablename__ = "user_basic"
    __table_args__ = (
        UniqueConstraint("mobile", name="mobile"),
        UniqueConstraint("user_name", name="user_name"),
    )

    class STATUS:
        ENABLE = 1
        DISABLE = 0

    id = Column("user_id", ID, primary_key=True, autoincrement=True)
    account = Column(String(20), nullable=True)
    email = Column(String(20), nullable=True)
    status = Column(TINY, nullable=False, default=STATUS.ENABLE, server_default="1")
    mobile = Column(CHAR(11), nullable=False)
    password = Column(String(93), nullable=True)
    name = Column("user_name", String(32), nullable=False)
    profile_photo = Column(String(128), nullable=True)
    last_login = Column(DateTime, nullable=True)
    is_media = Column(Boolean, nullable=False, default=False, server_default="0")
    is_verified = Column(Boolean, nullable=False, default=False, server_default="0")
    introduction = Column(String(50), nullable=True)
    certificate = Column(String(30), nullable=True)
    article_count = Column(Integer, nullable=False, default=0, server_default="0")
    following_count = Column(Integer, nullable=False, default=0, server_default="0")
    fans_count = Column(Integer, nullable=False, default=0, server_default="0")
    like_count = Column(Integer, nullable=False, default=0, server_default="0")
    read_count = Column(Integer, nullable=False, default=0, server_default="0")


class Relation(Base):
    """A row of ``user_relation``: what ``user_id`` did to ``target_user_id``."""

    __tablename__ = "user_relation"
    __table_args__ = (UniqueConstraint("user_id", "target_user_id", name="user_target"),)

    class RELATION:
        DELETE = 0
        FOLLOW = 1
        BLACKLIST = 2

    id = Column("relation_id", ID, primary_key=True, autoincrement=True)
    user_id = Column(ID, nullable=False)
    target_user_id = Column(ID, nullable=False)
    relation = Column(TINY, nullable=False, default=RELATION.DELETE, server_default="0")
    ctime = Column("create_time", DateTime, nullable=False, default=datetime.now, server_default=func.now())
    utime = Column(
        "update_time", DateTime, nullable=False, default=datetime.now, onupdate=datetime.now, server_default=func.now()
    )
