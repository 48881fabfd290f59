"""Every error sage-agent raises on purpose.

``SageError`` is the base: catch it to handle what a user can fix (a bad file, an unknown
id, a locked database) and let anything else show as the bug it is; the command line
does exactly that. Each subclass also derives from the built-in exception it stands for,
so ``except ValueError`` or ``except KeyError`` written against the built-ins still works.

A wrong type (a number where a string belongs) stays a plain TypeError: that is a bug in
the calling code, not something a user of the command line can fix.
"""

from __future__ import annotations


class SageError(Exception):
    """Base of sage-agent's errors; the message says what is wrong and what to do."""


class InvalidInput(SageError, ValueError):
    """A value passed in is unusable: an empty text, a prompt too long, a NaN, a bad size."""


class ConfigError(InvalidInput):
    """A configuration value is out of range (BufferConfig, StoreConfig, TriggerConfig, ...)."""


class NotFoundError(SageError, KeyError):
    """An id (adapter, cluster, run, thread) or a file that is not there."""

    def __str__(self) -> str:
        # KeyError would quote the message; it is a sentence, not a key.
        return str(self.args[0]) if self.args else ""


class DataError(SageError, ValueError):
    """A task file cannot be read; the message names the file and line."""


class MalformedTask(DataError):
    """A task record that cannot be split into steps; the message names what is missing."""


class DecompositionError(SageError, ValueError):
    """A task could not be split into steps; the message says what was wrong."""


class ExpressionError(SageError, ValueError):
    """The expression is not plain arithmetic, or cannot be computed."""


class UnknownModelError(SageError, ValueError):
    """The model id is neither a local folder nor a model in the local Hugging Face cache."""


class EmbeddedModelMissing(SageError, RuntimeError):
    """An embedded model's package is not installed."""


class AdapterError(SageError, ValueError):
    """An adapter cannot be loaded or used: missing files, wrong weights, unknown name."""


class CorruptAdapter(AdapterError):
    """An adapter's files do not match their checksum; it is marked broken, never loaded."""


class DatabaseError(SageError, RuntimeError):
    """The database cannot be used; the message says why and what to do."""


class DatabaseLocked(DatabaseError):
    """Another process held the database lock for longer than the timeout."""


class SchemaVersionError(DatabaseError):
    """The file was written by a sage-agent with another schema version."""


class UnsafeCheckpoint(DatabaseError):
    """A checkpoint names a type outside the allow-list; it was refused, not loaded."""


class StoreError(SageError, RuntimeError):
    """The LoRA Store cannot run on this input; the message says why."""


class RunError(SageError, RuntimeError):
    """A run cannot start or resume; the message says why."""


class EngineError(SageError, RuntimeError):
    """An answering server (vLLM's OpenAI-compatible API) is unreachable, did not start,
    or refused a request; the message names the server and what it said."""


class ContextError(SageError, TypeError):
    """The SAGE graph was given no usable context; the message says what to pass."""
