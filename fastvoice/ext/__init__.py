"""Adapters that plug fastvoice into bot frameworks.

- :mod:`fastvoice.ext.discord`: a ``discord.VoiceProtocol`` for discord.py 2.x
  (``await channel.connect(cls=fastvoice.ext.discord.VoiceClient)``).

Nothing here is imported by ``import fastvoice``: each adapter imports its framework
only when it is imported itself.
"""
