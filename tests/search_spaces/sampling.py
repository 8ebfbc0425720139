"""What Ray's OptunaSearch does with a define-by-run space, without Ray: the tests of the spaces
sample configs the way a job's trials get them."""

from __future__ import annotations

from typing import Any

from search_spaces import SearchSpace


def sample_config(space: SearchSpace, trial: Any) -> dict[str, Any]:
    """What Ray's OptunaSearch hands a trial: the captured suggestions updated with the constants."""
    captured: dict[str, Any] = {}

    class Captor:
        number = getattr(trial, "number", None)

        def __getattr__(self, name: str) -> Any:
            method = getattr(trial, name)
            if not name.startswith("suggest_"):
                return method

            def capture(param_name: str, *args: Any, **kwargs: Any) -> Any:
                captured[param_name] = method(param_name, *args, **kwargs)
                return captured[param_name]

            return capture

    constants = space(Captor())
    return {**captured, **constants}
