"""A method whose recipe fails, for tests of how a failed run reads: method "failing", recipe "fit", its
config's ``kind`` choosing the failure (a UserError, a ConfigError, a KeyError, a module that fails to
import)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from app.api import ConfigError, Method, Recipe, UserError, config_field, hookimpl

USER_MESSAGE = "the images folder /nowhere/images does not exist; pass -o path=DIR"
CONFIG_MESSAGE = "lr: expected a number from 0 to 1, got 7"
MISSING_MODULE = "avstudio_tests_no_such_module"


@dataclass
class FailConfig:
    kind: str = config_field("user", "how the recipe fails", choices=("user", "config", "key", "import"))


def train_fit(config: FailConfig, ctx) -> None:
    if config.kind == "user":
        raise UserError(USER_MESSAGE)
    if config.kind == "config":
        raise ConfigError(CONFIG_MESSAGE)
    if config.kind == "key":
        return {"a": 1}["b"]
    importlib.import_module(MISSING_MODULE)
    return None


@hookimpl
def register_methods(register) -> None:
    register(Method(slug="failing", title="Failing", paper="-", summary="A recipe that fails on purpose.",
                    recipes=[Recipe("fit", FailConfig, train_fit, "fails as its config's kind says")]))
