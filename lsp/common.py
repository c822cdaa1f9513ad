"""What the server's modules share: error answers, the handler guard, command names."""

from __future__ import annotations

import asyncio
import functools
import traceback
from collections.abc import Callable
from typing import Any

from lsprotocol import types as T
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInternalError,
    JsonRpcRequestCancelled,
    JsonRpcServerNotInitialized,
)

from assistant.api import EngineError

from .config import ConfigError

REQUEST_FAILED = -32803  # LSP "RequestFailed": well-formed, but could not be done (e.g. the model is loading)
CMD_APPLY = "remask.apply"
CMD_INSTRUCT = "remask.editWithInstruction"
MAX_CONTEXT_CHARS = 64_000  # cut huge files to a window around the cursor before the engine sees them


def failed(message: str) -> JsonRpcException:
    """An error answer the editor shows as it is."""
    return JsonRpcException(message=message, code=REQUEST_FAILED)


class ModelLoading(JsonRpcException):
    """The model is still loading: an expected answer (RequestFailed), logged at info level without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(message=message, code=REQUEST_FAILED)


def jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None)))


def guarded(fn: Callable) -> Callable:
    """Turn bad input into LSP errors and unexpected exceptions into logged internal errors."""

    @functools.wraps(fn)
    async def wrapper(ls: Any, params: Any) -> Any:
        if not getattr(ls, "initialized", True):
            raise JsonRpcServerNotInitialized()  # LSP: every request before `initialize` gets -32002
        try:
            return await fn(ls, params)
        except asyncio.CancelledError:
            raise
        except JsonRpcException as e:
            if e.code != JsonRpcRequestCancelled.CODE:
                level = T.MessageType.Info if isinstance(e, ModelLoading) else T.MessageType.Warning
                ls.log(f"{fn.__name__}: {e.message}", level)
            raise
        except (EngineError, ConfigError) as e:
            ls.log(f"{fn.__name__}: {e}", T.MessageType.Warning)
            raise failed(f"remask: {e}") from None
        except Exception as e:
            ls.log(f"internal error in {fn.__name__}: {e}\n{traceback.format_exc()}", T.MessageType.Error)
            raise JsonRpcInternalError(f"remask: internal error in {fn.__name__}: {type(e).__name__}: {e}") from None

    return wrapper
