# The toutiao image: the web app (gunicorn, the default command) and the `flask stats`
# commands (the stats-fix CronJob and the backfill Jobs set `command: [flask]`), one build.
# No Docker engine runs on our machines: tests/test_deploy.py lints this file with
# hadolint and runs the manifests' commands against the real MariaDB and Redis.

# Build stage: the pinned dependencies in a virtualenv that the runtime stage copies whole.
FROM python:3.11-slim-bookworm AS build
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
# Wheels only: the slim base has no compiler, and a failed wheel lookup should stop the
# build rather than start a source build.
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: \
        -r /tmp/requirements.txt

# Runtime stage: no pip cache, no build leftovers, a non-root numeric user.
FROM python:3.11-slim-bookworm
# Numeric uid/gid 10001, matching runAsUser in deploy/k8s: Kubernetes can only verify
# runAsNonRoot for a numeric USER.
RUN groupadd --system --gid 10001 toutiao \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin toutiao
COPY --from=build /opt/venv /opt/venv
# FLASK_APP makes `flask stats fix` work as a container command from WORKDIR /app.
# The root filesystem is read-only in Kubernetes: no bytecode is written at run time (it
# is compiled below), and logs go unbuffered to stdout/stderr for `kubectl logs`.
ENV PATH=/opt/venv/bin:$PATH \
    FLASK_APP=manage \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
COPY manage.py ./
# gunicorn reads gunicorn.conf.py from the working directory (worker class, timeouts, limits).
COPY gunicorn.conf.py ./
COPY common/ common/
COPY toutiao/ toutiao/
RUN python -m compileall -q /app
USER 10001:10001
EXPOSE 8000
# Exec form, no shell and no wrapper: the command is PID 1 and gets SIGTERM itself
# (gunicorn shuts down gracefully; `flask stats fix` finishes its batch and exits 143).
CMD ["gunicorn", "--bind=0.0.0.0:8000", "--access-logfile=-", "toutiao:create_app()"]
