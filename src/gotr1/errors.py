"""The errors every layer of gotr1 may raise: the bottom of the import graph (imports nothing)."""

from __future__ import annotations

import dataclasses


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
        """The same error, naming its field as ``names`` (ours -> the caller's) spells it."""
        message = str(self)
        if self.field in names and message.startswith(self.field):
            new = names[self.field]
            return ConfigError(new + message[len(self.field) :], new)
        return ConfigError(message, self.field)


def refuse_set(config: object, names: tuple[str, ...], reason: str) -> None:
    """Refuse settings the chosen mode would silently ignore: raise a one-line `ConfigError` naming
    the first of ``names`` whose value differs from its dataclass default, saying ``reason``.

    Defaults pass, so a config that leaves such a field alone (or spells out its default) stays
    valid in every mode.
    """
    for spec in dataclasses.fields(config):  # type: ignore[arg-type]
        if spec.name not in names:
            continue
        if spec.default is not dataclasses.MISSING:
            default = spec.default
        else:
            default = spec.default_factory()  # type: ignore[misc]
        value = getattr(config, spec.name)
        if value != default:
            raise ConfigError(
                f"{spec.name} is set ({value!r}) but {reason}, so it would be ignored; remove it",
                spec.name,
            )
