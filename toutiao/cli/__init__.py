"""The app's commands, assembled here: each module defines its group or command, and
:func:`init_app` adds them (``flask auth``, ``flask db``, ``flask demo``, ``flask stats``)."""


def init_app(app):
    from toutiao.cli.auth import auth_cli
    from toutiao.cli.db import db_cli
    from toutiao.cli.demo import demo_cli
    from toutiao.cli.explain import explain_counters
    from toutiao.cli.scheduler import scheduler_command
    from toutiao.cli.stats import stats_cli

    stats_cli.add_command(explain_counters)
    stats_cli.add_command(scheduler_command)
    for group in (auth_cli, db_cli, demo_cli, stats_cli):
        app.cli.add_command(group)
