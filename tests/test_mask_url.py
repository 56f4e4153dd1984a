"""mask_url hides the whole userinfo of every URL in a text, whatever the password holds."""

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from toutiao.logs import mask_url

# Passwords as operators paste them: letters and digits, with '@', ':', '/' and '%' unencoded.
passwords = st.text(alphabet="abcXYZ019@:/%", min_size=1, max_size=24)
users = st.sampled_from(["", "stats", "web", "toutiao"])
hosts = st.sampled_from(["redis", "127.0.0.1", "mysql.toutiao.svc", "db-0.example.com"])
schemes = st.sampled_from(["redis", "rediss", "mysql+pymysql"])


@settings(deadline=None)  # the machine is shared: no timing in a property test
@given(scheme=schemes, user=users, password=passwords, host=hosts, port=st.integers(1, 65535), db=st.integers(0, 15))
@example(scheme="redis", user="", password="p@ss", host="host", port=6379, db=0)
@example(scheme="redis", user="stats", password="a:b/c%40@d", host="redis", port=6379, db=3)
def test_the_password_never_appears_and_host_port_db_do(scheme, user, password, host, port, db):
    url = f"{scheme}://{user}:{password}@{host}:{port}/{db}"
    masked = f"{scheme}://***@{host}:{port}/{db}"
    texts = [url, f"cannot reach Redis at {url}: Connection refused", f"url='{url}' counters=3"]
    assume(all(password not in text.replace(url, masked) for text in texts))

    for text in texts:
        shown = mask_url(text)
        assert password not in shown
        assert f"{host}:{port}/{db}" in shown
        assert shown == text.replace(url, masked)


@settings(deadline=None)
@given(token=passwords)
def test_a_userinfo_without_a_colon_is_hidden_too(token):
    assume(token not in "redis://***@redis:6379/0")
    assert mask_url(f"redis://{token}@redis:6379/0") == "redis://***@redis:6379/0"


def test_a_url_without_userinfo_is_unchanged():
    assert mask_url("cannot reach redis://redis:6379/0 or http://gw:9091") == (
        "cannot reach redis://redis:6379/0 or http://gw:9091"
    )


def test_every_url_in_a_text_is_masked():
    text = "mysql+pymysql://u:p1@db:3306/x then redis://:p@2@redis:6379/1"
    assert mask_url(text) == "mysql+pymysql://***@db:3306/x then redis://***@redis:6379/1"
