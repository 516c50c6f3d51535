"""The errors every layer of gotr1 may raise: the bottom of the import graph (imports nothing)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (file, flag, config) that deserves a one-line message, not a traceback."""


class ConfigError(UserError, ValueError):
    """A bad config value; the message names the field (and the file, when there is one).

    ``field`` is the name of the field at fault where the message begins with it. A config that
    hands some of its fields to another config's checks (GRPOConfig's ``reward_weights`` are
    RewardConfig's ``weights``) passes the error on under its own names with :meth:`renamed`.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def renamed(self, names: dict[str, str]) -> ConfigError:
        """The same error naming its field as ``names`` (this config's name -> the caller's) spells it."""
        message = str(self)
        if self.field in names and message.startswith(self.field):
            new = names[self.field]
            return ConfigError(new + message[len(self.field) :], new)
        return ConfigError(message, self.field)
