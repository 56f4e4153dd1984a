"""Lua scripts shared by every client, sent to the server once by their SHA."""


class Lua:
    """A Lua script run with EVALSHA (redis-py loads it when the server does not know it)."""

    def __init__(self, source: str):
        self.source = source
        self._script = None

    def __call__(self, client, keys=(), args=()):
        """Run the script on ``client`` (a client or a pipeline)."""
        if self._script is None:
            self._script = client.register_script(self.source)
        return self._script(keys=list(keys), args=list(args), client=client)


#: Lua lines giving ``now``, the server's time in milliseconds: the one clock every lease
#: and announcement deadline is read against, whichever host the caller runs on.
NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""
