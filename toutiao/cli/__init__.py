"""Command groups of the app, one module each."""


def init_app(app):
    from toutiao.cli.db import db_cli
    from toutiao.cli.demo import demo_cli
    from toutiao.cli.stats import stats_cli
    from toutiao.cli import scheduler  # noqa: F401  (adds 'stats scheduler')
    from toutiao.cli import explain  # noqa: F401  (adds 'stats explain')

    app.cli.add_command(db_cli)
    app.cli.add_command(demo_cli)
    app.cli.add_command(stats_cli)
