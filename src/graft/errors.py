"""The exception hierarchy.

Every error a user can cause derives from :class:`GraftError` and from the matching builtin, so
``except ValueError`` keeps working for callers who do not know graft (scikit-learn's habit). The CLI
maps :class:`GraftError` to exit code 2 and anything else to exit code 1.
"""

from __future__ import annotations


class GraftError(Exception):
    """Base class of every error graft raises on purpose."""


class ConfigError(GraftError, ValueError):
    """A configuration value or combination is invalid."""


class DataError(GraftError, ValueError):
    """Input data cannot be used: unreadable file, bad rows, too few examples."""


class ContractError(GraftError, ValueError):
    """Inputs do not match what a backbone or a trained model accepts (modality, columns, labels)."""


class BundleError(GraftError, ValueError):
    """A saved bundle is missing, incomplete, from an unknown format version, or was modified."""


class OutputError(GraftError, ValueError):
    """An output path holds files graft did not write (or changed since), or lies where the command reads."""


class NotFittedError(GraftError, AttributeError):
    """A model was used before it was fitted."""


class GraftWarning(UserWarning):
    """Something graft handled but the user should know about; the CLI prints it as one line."""


class BundleWarning(GraftWarning):
    """A bundle loads, but with less checking than a current one gets (e.g. an older format)."""


def format_problems(header: str, problems: list[str], limit: int = 20) -> str:
    """One message for many problems: a summary line, then one indented line per problem."""
    shown = [f"  - {p}" for p in problems[:limit]]
    if len(problems) > limit:
        shown.append(f"  ... and {len(problems) - limit} more")
    return "\n".join([header, *shown])
